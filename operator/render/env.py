"""Environment of the trainer container, the same on every rank."""

from __future__ import annotations

from ..api import LLMTrainingJob
from .names import HOME_DIR, MARKER_DIR
from .network import plan_network


def static_env(job: LLMTrainingJob) -> dict[str, str]:
    """Literal env every rank needs: rendered into the pod and into .deepspeed_env (ssh mode)."""
    spec = job.spec
    env = {
        "HOME": HOME_DIR,
        "PYTHONUNBUFFERED": "1",
        "LLMTRAIN_JOB_NAME": job.metadata.name,
        "LLMTRAIN_MARKER_DIR": MARKER_DIR,
        "LLMTRAIN_OUTPUT_DIR": spec.checkpoint.mount_path,
        # DeepSpeed JIT-builds ops at run time; the image's default cache dir may not be writable.
        "TORCH_EXTENSIONS_DIR": f"{HOME_DIR}/.cache/torch_extensions",
        "TRITON_CACHE_DIR": f"{HOME_DIR}/.cache/triton",
    }
    if spec.accelerator == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
    env.update(plan_network(spec.network).env)
    for var in spec.pod_template.env:  # literal user env also reaches ssh-launched ranks
        if "value" in var and "name" in var:
            env[var["name"]] = str(var["value"])
    return env
