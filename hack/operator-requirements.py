#!/usr/bin/env python3
"""Print the pip requirements of the operator image, one per line, derived from pyproject.toml.

    python hack/operator-requirements.py [pyproject.toml]

The Dockerfile's `operator` target installs the project wheel with `--no-deps` plus exactly these, so the
operator image has no PyTorch/DeepSpeed. Versions are pyproject's own specifiers (the single source):

* if pyproject has a `trainer` extra, the base `dependencies` are the operator's;
* otherwise the base `dependencies` minus TRAINER_ONLY (what only llm_trainer's training code imports).

OPERATOR_EXTRA is what the operator needs that pyproject does not list (yet): keep it empty once pyproject
names it. tests/unit/test_packaging.py checks that the operator runs with only these distributions.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# Distributions only the trainer needs (torch and DeepSpeed are several GB).
TRAINER_ONLY = frozenset({"torch", "deepspeed", "safetensors", "tokenizers", "tqdm"})
# What the operator needs beyond pyproject's list: nothing (per-job SSH keys use `cryptography`, which
# pyproject lists; the image has no ssh-keygen to fall back on, and the test runs without one).
OPERATOR_EXTRA: tuple[str, ...] = ()


def dist_name(requirement: str) -> str:
    return re.split(r"[^A-Za-z0-9._-]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def operator_requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    deps: list[str] = list(project.get("dependencies", []))
    if "trainer" not in project.get("optional-dependencies", {}):
        deps = [d for d in deps if dist_name(d) not in TRAINER_ONLY]
    names = {dist_name(d) for d in deps}
    return deps + [r for r in OPERATOR_EXTRA if dist_name(r) not in names]


def main(argv: list[str]) -> int:
    pyproject = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "pyproject.toml"
    print("\n".join(operator_requirements(pyproject)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
