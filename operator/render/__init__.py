"""Pure functions from a validated LLMTrainingJob to the Kubernetes objects that run it.

Nothing here talks to a cluster: the operator applies what these return, and
`llm-operator render` prints it.
"""

from __future__ import annotations

from ..api import LLMTrainingJob
from .config import build_config_map
from .gang import build_gang_objects, plan_gang
from .names import RenderContext
from .pods import build_worker_pod
from .service import build_service
from .ssh import build_ssh_secret

__all__ = ["RenderContext", "render_children", "build_config_map", "build_gang_objects", "build_service", "build_worker_pod", "build_ssh_secret"]


def render_children(job: LLMTrainingJob, ctx: RenderContext | None = None, ssh_keys: dict[str, str] | None = None, restart: int = 0) -> list[dict]:
    """Every child object of the job, in creation order (config and the gang's group before the pods that use
    them); pods of gang `restart`."""
    ctx = ctx or RenderContext()
    children: list[dict] = [build_config_map(job, ctx), build_service(job)]
    if job.spec.launcher.mode == "ssh":
        children.append(build_ssh_secret(job, ssh_keys))
    children += build_gang_objects(job, plan_gang(job, ctx))
    children += [build_worker_pod(job, rank, ctx, restart) for rank in range(job.spec.nodes)]
    return children
