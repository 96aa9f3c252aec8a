"""`python -m llm_trainer.launch` = `llm-train launch`."""

import sys

from .cli import main

sys.exit(main())
