"""What the operator reads from a worker pod: named predicates over the pod as the API returns it. Pure."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping, Optional

from .clock import parse_time
from .render.names import NODE_RANK_LABEL, RESTART_LABEL, TRAINER_CONTAINER

Pod = Mapping[str, Any]
DISRUPTION_TARGET = "DisruptionTarget"


def name_of(pod: Pod) -> str:
    return pod["metadata"]["name"]


def node_rank(pod: Pod) -> int:
    return int(pod["metadata"].get("labels", {}).get(NODE_RANK_LABEL, -1))


def restart_of(pod: Pod) -> int:
    """The gang incarnation the pod belongs to; pods from before restarts existed are gang 0."""
    try:
        return int(pod["metadata"].get("labels", {}).get(RESTART_LABEL, 0))
    except ValueError:
        return -1  # not one of ours to keep: treated as a leftover


def phase_of(pod: Pod) -> Optional[str]:
    return (pod.get("status") or {}).get("phase")


def is_terminating(pod: Pod) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def has_succeeded(pod: Pod) -> bool:
    return phase_of(pod) == "Succeeded"


def has_failed(pod: Pod) -> bool:
    return phase_of(pod) == "Failed"


def is_finished(pod: Pod) -> bool:
    return phase_of(pod) in ("Succeeded", "Failed")


def is_running(pod: Pod) -> bool:
    return phase_of(pod) == "Running" and not is_terminating(pod)


def condition(pod: Pod, type_: str) -> Optional[Mapping[str, Any]]:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def has_condition(pod: Pod, type_: str, status: str = "True") -> bool:
    found = condition(pod, type_)
    return found is not None and found.get("status") == status


def is_ready(pod: Pod) -> bool:
    return is_running(pod) and has_condition(pod, "Ready")


def is_disrupted(pod: Pod) -> bool:
    """Preempted, evicted, drained or its node lost: the scheduler, kubelet or a controller said so."""
    return has_condition(pod, DISRUPTION_TARGET)


def not_ready_since(pod: Pod) -> Optional[datetime]:
    """When a Running pod lost readiness. Worker pods have no readiness probe, so a running worker that is
    not Ready is one whose node stopped reporting (the node lifecycle controller marks its pods NotReady)."""
    ready = condition(pod, "Ready")
    if not is_running(pod) or ready is None or ready.get("status") == "True":
        return None
    return parse_time(ready.get("lastTransitionTime"))


def terminated_state(pod: Pod) -> dict[str, Any]:
    """The trainer container's terminated state (or the first terminated container's); {} while it runs."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for container in sorted(statuses, key=lambda s: s.get("name") != TRAINER_CONTAINER):
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return {}


def exit_code_of(pod: Pod) -> Optional[int]:
    return terminated_state(pod).get("exitCode")
