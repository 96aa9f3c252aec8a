#!/usr/bin/env python3
"""Print the pip requirements of the dependency-only image stage, one per line, derived from pyproject.toml.

    python hack/deps-requirements.py [pyproject.toml]

The Dockerfile's `deps` stage installs exactly these (after `torch==${TORCH_VERSION}`) and not our package: it is
the image a user's program runs in (docs/programs.md) and the cached base of our trainer images, which add only
the project wheel. So the list is the `trainer` extra plus PROGRAM_LIBRARIES (what examples/programs import
beyond it), with the pins pyproject gives them elsewhere (the `test` extra): pyproject stays the single source.
hack/images.sh hashes this output (with the stage's own lines) to name the cached image.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# examples/programs/train_hf_trainer.py: transformers' Trainer, which needs accelerate
PROGRAM_LIBRARIES = ("transformers", "accelerate")


def dist_name(requirement: str) -> str:
    return re.split(r"[^A-Za-z0-9._-]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def deps_requirements(pyproject: Path) -> list[str]:
    extras: dict[str, list[str]] = tomllib.loads(pyproject.read_text())["project"].get("optional-dependencies", {})
    if "trainer" not in extras:
        raise SystemExit(f"{pyproject}: project.optional-dependencies.trainer is missing")
    pinned = {dist_name(r): r for extra in extras.values() for r in extra}
    missing = [name for name in PROGRAM_LIBRARIES if name not in pinned]
    if missing:
        raise SystemExit(f"{pyproject}: no optional-dependencies entry pins {', '.join(missing)}")
    trainer = list(extras["trainer"])
    names = {dist_name(r) for r in trainer}
    return trainer + [pinned[name] for name in PROGRAM_LIBRARIES if name not in names]


def main(argv: list[str]) -> int:
    pyproject = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "pyproject.toml"
    print("\n".join(deps_requirements(pyproject)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
