"""Job conditions: one upsert that keeps lastTransitionTime unless the status changes, so an unchanged
world yields an identical status and the operator writes nothing."""

from __future__ import annotations

from typing import Any, Optional

CREATED, RUNNING, RESTARTING, SUSPENDED, SUCCEEDED, FAILED = "Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed"
# The training step did not advance (stallTimeoutSeconds). Not "Stalled": kstatus reads Stalled=True as a failed
# resource, and a stalled gang is restarted (health.py sets Stalled only on a failed job).
PROGRESS_STALLED = "ProgressStalled"
TOPOLOGY_PLACED = "TopologyPlaced"  # whether a placement path honours spec.gang.topology (render/topology.py)
GANG_SCHEDULED = "GangScheduled"  # which gang scheduler binds the workers all or nothing (False: none does)
QUEUED = "Queued"  # Kueue: True while the job waits for admission (kueue.py)


def find(conditions: list[dict[str, Any]], type_: str) -> Optional[dict[str, Any]]:
    return next((c for c in conditions if c["type"] == type_), None)


def is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    found = find(conditions, type_)
    return found is not None and found["status"] == "True"


def set_condition(conditions: list[dict], type_: str, status: str, reason: str, message: str, now: str, generation: int | None) -> bool:
    """Upsert a condition; lastTransitionTime moves only when status does. Returns whether status changed."""
    for condition in conditions:
        if condition["type"] == type_:
            changed = condition["status"] != status
            if changed:
                condition["lastTransitionTime"] = now
            condition.update(status=status, reason=reason, message=message)
            if generation is not None:
                condition["observedGeneration"] = generation
            return changed
    entry: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now}
    if generation is not None:
        entry["observedGeneration"] = generation
    conditions.append(entry)
    return status == "True"
