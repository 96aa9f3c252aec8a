"""The resources of a worker's trainer container, and what a gang of them asks for together."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Optional

from ..api import LLMTrainingJob
from .network import NetworkPlan, plan_network

GPU_RESOURCE = "nvidia.com/gpu"
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([numkMGTPE]|[KMGTPE]i)?$")


def container_resources(job: LLMTrainingJob, network: Optional[NetworkPlan] = None) -> dict:
    spec = job.spec
    network = network or plan_network(spec.network)
    limits = dict(spec.resources.limits)
    requests = dict(spec.resources.requests)
    if spec.accelerator == "gpu":
        limits.setdefault(GPU_RESOURCE, spec.slots_per_node)
    for name, count in network.resources.items():
        limits.setdefault(name, count)
    # Quantities as strings: the canonical form (the API server accepts ints, typed clients do not).
    out = {}
    if limits:
        out["limits"] = {name: str(value) for name, value in limits.items()}
    if requests:
        out["requests"] = {name: str(value) for name, value in requests.items()}
    return out


def scale_quantity(quantity: str, factor: int) -> Optional[str]:
    """'900Gi' × 4 = '3600Gi'; None for a form this does not read (an exponent), which is then left out."""
    match = _QUANTITY.match(quantity)
    if match is None:
        return None
    return format((Decimal(match.group(1)) * factor).normalize(), "f") + (match.group(2) or "")


def gang_requests(job: LLMTrainingJob, members: int) -> dict[str, str]:
    """What `members` workers request together (a limit stands for a missing request, as in Kubernetes)."""
    resources = container_resources(job)
    per_pod = {**resources.get("limits", {}), **resources.get("requests", {})}
    scaled = {name: scale_quantity(value, members) for name, value in per_pod.items()}
    return {name: value for name, value in scaled.items() if value is not None}
