"""The per-job SSH Secret (ssh launcher mode). Keys are generated once by the operator, never shared."""

from __future__ import annotations

from ..api import LLMTrainingJob
from .names import object_meta, ssh_secret_name

SSH_SECRET_KEYS = ("id_ed25519", "id_ed25519.pub", "authorized_keys", "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "known_hosts")
REDACTED = "<generated per job by the operator>"


def build_ssh_secret(job: LLMTrainingJob, keys: dict[str, str] | None) -> dict:
    """keys: the generated key material; None renders placeholders (for `llm-operator render`)."""
    data = dict(keys) if keys is not None else {k: REDACTED for k in SSH_SECRET_KEYS}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": object_meta(job, ssh_secret_name(job), role="ssh"),
        "stringData": data,
    }
