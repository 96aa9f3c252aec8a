"""The per-job SSH Secret (ssh launcher mode). Keys are generated once by the operator, never shared."""

from __future__ import annotations

from llm_trainer.ssh import SECRET_KEYS  # the launcher's side of the contract (stdlib-only module)

from ..api import LLMTrainingJob
from .names import object_meta, ssh_secret_name
REDACTED = "<generated per job by the operator>"


def build_ssh_secret(job: LLMTrainingJob, keys: dict[str, str] | None) -> dict:
    """keys: the generated key material; None renders placeholders (for `llm-operator render`)."""
    data = dict(keys) if keys is not None else {k: REDACTED for k in SECRET_KEYS}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": object_meta(job, ssh_secret_name(job), role="ssh"),
        "stringData": data,
    }
