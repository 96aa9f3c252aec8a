"""The LLMTrainingJob API: models, presets, validation and the DeepSpeed config derived from a spec.

Depends on pydantic only, so the trainer imports it too.
"""

from __future__ import annotations

from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from .v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    LLMTrainingJob,
    LLMTrainingJobSpec,
    LLMTrainingJobStatus,
)

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION",
    "LLMTrainingJob", "LLMTrainingJobSpec", "LLMTrainingJobStatus",
    "SpecError", "parse_job", "load_job_file",
]


class SpecError(ValueError):
    """An invalid manifest; each line names the field path and the rule it broke."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid LLMTrainingJob:\n" + "\n".join(f"  {p}" for p in problems))


def _describe(error: Mapping[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message}" if path else message


def parse_job(manifest: Mapping[str, Any]) -> LLMTrainingJob:
    """Validate a manifest (a dict as read from YAML or the API server)."""
    if not isinstance(manifest, Mapping):
        raise SpecError([f"expected a mapping with apiVersion, kind, metadata and spec, got {type(manifest).__name__}"])
    try:
        return LLMTrainingJob.model_validate(dict(manifest))
    except ValidationError as exc:
        raise SpecError([_describe(e) for e in exc.errors()]) from None


def load_job_file(path: str) -> LLMTrainingJob:
    """Read the single LLMTrainingJob in a YAML file."""
    with open(path) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    jobs = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if len(jobs) != 1:
        raise SpecError([f"{path}: expected exactly one {KIND} document, found {len(jobs)}"])
    return parse_job(jobs[0])
