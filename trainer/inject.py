"""`python3 -m llm_trainer.inject DIR`: copy the dependency-free launcher into DIR (a program job's init container).

The user's image needs only python3: DIR (an emptyDir, on the program's PYTHONPATH) gets `llm_trainer.launch`, the
few stdlib-only modules it imports and `llm_operator.api.contract`, with empty package __init__ files so that no
pydantic, PyYAML or torch import runs. tests/trainer/test_program_launch.py runs the copy with `python -S`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from llm_operator.api import contract

TRAINER = Path(__file__).resolve().parent
OPERATOR = Path(contract.__file__).resolve().parent.parent
# (source, destination under DIR); the launch package is copied whole
MODULES = [(TRAINER / name, f"llm_trainer/{name}") for name in ("markers.py", "ssh.py", "shm.py", "progress_receiver.py")] + [
    (OPERATOR / "api" / "contract.py", "llm_operator/api/contract.py")]
EMPTY_PACKAGES = ("llm_trainer/__init__.py", "llm_operator/__init__.py", "llm_operator/api/__init__.py")


def inject(dest: Path) -> None:
    for package in ("launch", "report_helper"):  # report_helper: llmtraining_report, put on the program's PYTHONPATH
        shutil.copytree(TRAINER / package, dest / "llm_trainer" / package, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for package in EMPTY_PACKAGES:
        (dest / package).parent.mkdir(parents=True, exist_ok=True)
        (dest / package).write_text('"""Injected by llm_trainer.inject: only the stdlib-only launcher lives here."""\n')
    for source, target in MODULES:
        shutil.copyfile(source, dest / target)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m llm_trainer.inject DIR", file=sys.stderr)
        return 2
    inject(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
