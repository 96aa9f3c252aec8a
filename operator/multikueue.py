"""MultiKueue. Worker side: a job Kueue's MultiKueue copied to this cluster (from a manager cluster where it carries
spec.managedBy) comes without managedBy and with the label kueue.x-k8s.io/prebuilt-workload-name, and MultiKueue has
created its Workload here already (a copy of the manager's, without owner references). The operator adopts that
Workload instead of creating one, as Kueue's jobframework does for its own jobs (EnsurePrebuiltWorkloadOwnership):
it becomes the job's controller owner, and carries the job's name label so that the operator's watch sees it. Then
the job runs as any Kueue-queued job; Kueue copies its status back to the manager's job. Manager side (spec.managedBy):
the job's Workload, created once (manager_creates_workload). Pure.

What MultiKueue writes (Kueue v0.17, pkg/controller/admissionchecks/multikueue: workload.go cloneForCreate,
externalframeworks/adapter.go createRemoteObject; pkg/controller/jobframework SetMultiKueueMeta)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .api import LLMTrainingJob
from .draft import TERMINAL_PHASES
from .render.names import JOB_NAME_LABEL, owner_reference

PREBUILT_WORKLOAD_LABEL = "kueue.x-k8s.io/prebuilt-workload-name"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # what jobframework labels an adopted Workload with
USE, ADOPT, WAIT, FOREIGN = "use", "adopt", "wait", "foreign"


def manager_creates_workload(queue: Optional[str], has_workload: bool, status: Mapping[str, Any]) -> bool:
    """On the manager (spec.managedBy), whether the operator creates the job's Workload now: the job names a LocalQueue
    (queue), has no Workload, and has not ended. status: the job's, which only MultiKueue writes here (the worker copy's,
    copied back). An ended job's Workload may be gone (Kueue's objectRetentionPolicies delete finished Workloads, a user
    may): a new one would be dispatched, and the job would run a second time. As Kueue's jobframework, which makes no
    Workload for a finished job."""
    return queue is not None and not has_workload and status.get("phase") not in TERMINAL_PHASES


def prebuilt_workload_name(job: LLMTrainingJob) -> Optional[str]:
    return job.metadata.labels.get(PREBUILT_WORKLOAD_LABEL) or None


@dataclass(frozen=True)
class Adoption:
    action: str  # use: ours already; adopt: patch it ours; wait: not there (yet); foreign: another object controls it
    message: str


def adoption(job: LLMTrainingJob, workload: Optional[Mapping[str, Any]]) -> Adoption:
    """What to do with the Workload named by the job's prebuilt-workload-name label (None: there is none of that name)."""
    name = prebuilt_workload_name(job)
    if name is None:
        raise ValueError(f"job {job.metadata.name} has no {PREBUILT_WORKLOAD_LABEL} label")
    if workload is None:
        return Adoption(WAIT, f"waiting for Workload {name} (label {PREBUILT_WORKLOAD_LABEL}), which MultiKueue creates with the job")
    controller = next((ref for ref in workload["metadata"].get("ownerReferences") or [] if ref.get("controller")), None)
    if controller is None:
        return Adoption(ADOPT, f"adopting Workload {name}, which MultiKueue created for the job")
    if controller.get("uid") == job.metadata.uid:
        return Adoption(USE, f"Workload {name} is the job's")
    return Adoption(FOREIGN, f"Workload {name} (label {PREBUILT_WORKLOAD_LABEL}) is controlled by {controller.get('kind')} "
                             f"{controller.get('name')} (uid {controller.get('uid')}): not adopted; the job waits")


def adoption_patch(job: LLMTrainingJob, workload: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch of the Workload's metadata that makes the job its controller owner (the owner references it has are
    kept: a merge patch replaces the list whole) and labels it for the operator's watch. Its resourceVersion is a
    precondition: a Workload changed meanwhile is read again on the next reconcile."""
    meta = workload["metadata"]
    references = [dict(ref) for ref in meta.get("ownerReferences") or []] + [owner_reference(job)]
    return {"metadata": {"resourceVersion": meta.get("resourceVersion"), "ownerReferences": references,
                         "labels": {JOB_NAME_LABEL: job.metadata.name, JOB_UID_LABEL: job.metadata.uid or ""}}}
