"""A job queued by Kueue, inside the lifecycle decision: no pods until its Workload is admitted; evicted, the gang
stops as on suspend and the quota goes back once its pods are gone; finished, the Workload is marked Finished.
The Workload itself (what is written, how admission is read) is kueue.py's."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from .clock import seconds_between
from .conditions import CREATED, FAILED, QUEUED, RESTARTING, RUNNING, PROGRESS_STALLED, SUCCEEDED, find, is_true
from .draft import Decision, Draft, Event
from .kueue import Admission, admission_of, finish_patch, queue_name, release_quota_patch
from .multikueue import adoption, prebuilt_workload_name
from .pods import Pod, restart_of


def queued_by_kueue(d: Draft) -> bool:
    """Labelled with a LocalQueue, and either queued already or not started: a label added to a job that already
    ran without Kueue does not stop it (Kueue's own webhooks forbid that edit on a running job)."""
    if prebuilt_workload_name(d.job) is not None:  # copied here by MultiKueue: queued on this cluster by its Workload
        return True
    return queue_name(d.job) is not None and (find(d.conditions, QUEUED) is not None or not d.status.get("startTime"))


def wait_for_admission(d: Draft, pods: Sequence[Pod], admission: Admission, workload: Optional[Mapping[str, Any]]) -> Decision:
    """No pods until the Workload is admitted. Evicted while the gang ran: stop it as a suspension would (a new
    incarnation, not counted toward backoffLimit), then give the quota back so that Kueue queues the job again."""
    queue = queue_name(d.job)
    evicted = admission.evicted
    gang_exists = any(restart_of(p) == d.restarts for p in pods) or is_true(d.conditions, CREATED)
    if gang_exists:  # evicted, or the Workload deleted under a running gang; once: the next gang is a new incarnation
        d.status["restarts"] = d.restarts + 1
        d.status.pop("restartTime", None)
        d.phase = "Pending"
        reason = (evicted.get("reason") or "Evicted") if evicted is not None else "AdmissionLost"
        cause = (f"evicted by Kueue ({reason}: {evicted.get('message', '')})" if evicted is not None
                 else "its Kueue Workload is no longer admitted" + ("" if admission.exists else " (it was deleted)"))
        message = (f"{cause}; the gang was stopped (SIGTERM, so the trainer saved a checkpoint) and the job waits for "
                   f"admission again in LocalQueue {queue}")
        d.condition(QUEUED, "True", reason, message, event=None)
        d.events.append(Event("Warning", "Evicted", message))
        d.condition(CREATED, "False", "Evicted", message)
        d.condition(RUNNING, "False", "Evicted", message)
        d.clear(RESTARTING, "Evicted", message)
        d.clear(PROGRESS_STALLED, "Evicted", message)
    elif not admission.exists and prebuilt_workload_name(d.job) is not None:
        d.phase = "Pending"
        d.condition(QUEUED, "True", "WaitingForPrebuiltWorkload", adoption(d.job, None).message)
    else:
        why = f": {admission.pending_message}" if admission.pending_message else ""
        reason = (find(d.conditions, QUEUED) or {}).get("reason")
        if not is_true(d.conditions, QUEUED):
            d.phase = "Pending"
            d.condition(QUEUED, "True", "WaitingForAdmission", f"waiting for Kueue admission in LocalQueue {queue}{why}")
        elif (admission.pending_message and reason == "WaitingForAdmission") or reason == "WaitingForPrebuiltWorkload":  # Kueue's reason may change
            d.condition(QUEUED, "True", "WaitingForAdmission", f"waiting for Kueue admission in LocalQueue {queue}{why}")
    d.stop(pods)
    actions: dict[str, Any] = {}
    if not admission.exists and prebuilt_workload_name(d.job) is None:  # a prebuilt one is adopted, never created (reconcile.py)
        actions["create_workload"] = True
    elif evicted is not None and admission.reserved and not pods and workload is not None:
        actions["workload_patch"] = release_quota_patch(workload, d.stamp)
    return d.decision(**actions)


def admitted(d: Draft, admission: Admission) -> None:
    """The Workload is admitted: the gang may be created. Time spent queued again after an eviction does not
    count toward activeDeadlineSeconds (as time suspended does not)."""
    was_queued = is_true(d.conditions, QUEUED)
    if was_queued and d.status.get("startTime"):
        d.status["suspendedSeconds"] = round(float(d.status.get("suspendedSeconds") or 0) + seconds_between(d.since(QUEUED), d.now), 3)
    message = f"admitted by Kueue: ClusterQueue {admission.cluster_queue or '?'} (LocalQueue {queue_name(d.job)})"
    d.condition(QUEUED, "False", "Admitted", message)
    if was_queued:
        d.events.append(Event("Normal", "Admitted", message))


def settle_workload(d: Draft, decision: Decision, workload: Mapping[str, Any]) -> None:
    """The job is over: mark its Workload Finished (the quota goes back); suspended: the Workload goes."""
    admission = admission_of(workload)
    if decision.finished and not admission.finished and decision.workload_patch is None:
        message = next((c["message"] for c in decision.status["conditions"] if c["type"] in (SUCCEEDED, FAILED) and c["status"] == "True"), "")
        decision.workload_patch = finish_patch(workload, decision.status["phase"] == "Succeeded", message, d.stamp)
    elif d.job.spec.run_policy.suspend and not admission.finished and prebuilt_workload_name(d.job) is None:  # MultiKueue's stays
        decision.delete_workload = True
