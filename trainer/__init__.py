"""The in-pod training program: `python -m llm_trainer.worker`, `llm-train run|validate|launch` (docs/trainer.md)."""
