"""Health that GitOps tools read: the kstatus conditions Ready, Reconciling and Stalled, set from the phase beside
our own conditions. kstatus (Flux, kapply) reads Reconciling=True as InProgress and Stalled=True as Failed;
`kubectl wait --for=condition=Ready` waits on Ready. A running job is Ready, as kstatus treats a running batch Job:
a sync that waits on it must not wait for days of training. A suspended job is Ready with reason Suspended: it is
where its spec asks it to be, and nothing is left to reconcile until the spec changes."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from .conditions import FAILED, QUEUED, RUNNING, SUCCEEDED, SUSPENDED, find, is_true, set_condition

READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
IN_PROGRESS_PHASES = ("Pending", "Created", "Restarting")
# The phase condition whose message says why the job is where it is.
_PHASE_CONDITION = {"Running": RUNNING, "Succeeded": SUCCEEDED, "Failed": FAILED, "Suspended": SUSPENDED}


class Health(NamedTuple):
    """The three conditions for one phase: (status, reason) each; None leaves a condition out (or False if present)."""

    ready: tuple[str, str]
    reconciling: Optional[str]  # reason, when Reconciling is True
    stalled: Optional[str]  # reason, when Stalled is True


def health_of(phase: str, conditions: list[dict[str, Any]]) -> Health:
    """Pure: the kstatus conditions a job in this phase carries."""
    if phase in IN_PROGRESS_PHASES:
        reason = "Queued" if phase == "Pending" and is_true(conditions, QUEUED) else phase
        return Health(ready=("False", reason), reconciling=reason, stalled=None)
    if phase == "Failed":
        reason = (find(conditions, FAILED) or {}).get("reason") or "Failed"
        return Health(ready=("False", "Failed"), reconciling=None, stalled=reason)
    if phase in ("Running", "Succeeded", "Suspended"):
        return Health(ready=("True", phase), reconciling=None, stalled=None)
    raise ValueError(f"status.phase: unknown phase {phase!r}")


def _message(phase: str, conditions: list[dict[str, Any]]) -> str:
    found = find(conditions, _PHASE_CONDITION.get(phase, ""))
    return (found or {}).get("message") or f"phase {phase}"


def set_health_conditions(conditions: list[dict[str, Any]], phase: str, now: str, generation: Optional[int]) -> None:
    """Set Ready, Reconciling and Stalled from the phase (in place); lastTransitionTime moves only on a change, so an
    unchanged job gets an identical status and nothing is written."""
    health, message = health_of(phase, conditions), _message(phase, conditions)
    set_condition(conditions, READY, health.ready[0], health.ready[1], message, now, generation)
    for type_, reason in ((RECONCILING, health.reconciling), (STALLED, health.stalled)):
        if reason is not None:
            set_condition(conditions, type_, "True", reason, message, now, generation)
        elif find(conditions, type_) is not None:  # no condition is better than a pile of False ones
            set_condition(conditions, type_, "False", phase, message, now, generation)
