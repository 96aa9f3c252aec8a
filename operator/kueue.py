"""Kueue (kueue.sigs.k8s.io) integration: what the operator writes to and reads from a job's Kueue Workload. Pure.

Why a Workload managed by the operator, and not Kueue's plain-pod group integration (docs/scheduling.md says
more): Kueue's own integrations of batch jobs (Job, JobSet, the Kubeflow jobs) all work this way, and so does
this one, as an "external framework": the operator creates one Workload per job (one podSet of `nodes`
workers, owned by the job), creates no pod until Kueue admits it, and on eviction stops the gang (SIGTERM,
the trainer checkpoints) and, once every pod is gone, clears the quota reservation, as Kueue's jobframework
does for its own jobs. The pod-group integration would instead put Kueue's webhook and finalizer on every
worker pod: the gang restart (pods deleted and recreated with the same names) would then wait on Kueue's
finalizers, a group only finishes when every pod *succeeded* (the ssh launcher's sshd workers never do, so
the quota would never be released), and a restarted gang would rejoin a group whose workload may already be
finished. With the Workload the operator alone decides, from one object, when the gang may exist.

Contract (Kueue v0.17, kueue.x-k8s.io/v1beta2; pkg/controller/jobframework/reconciler.go):
  - a job labelled kueue.x-k8s.io/queue-name gets a Workload: spec.queueName, one podSet, spec.priority
    from the WorkloadPriorityClass named by its kueue.x-k8s.io/priority-class label;
  - pods exist only while the Workload is admitted (Admitted=True) and not evicted;
  - Evicted=True: stop the gang; when no pod is left, clear status.admission, QuotaReserved=False and
    Admitted=False, and Requeued=True after a preemption, so that Kueue queues it again;
  - the job finished: Finished=True (reason Succeeded/Failed), which releases the quota;
  - runPolicy.suspend: the Workload is deleted (quota released at once), a new one on resume.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from .api import LLMTrainingJob
from .multikueue import prebuilt_workload_name
from .render.names import JOB_NAME_LABEL, NODE_RANK_LABEL, RenderContext, labels, owner_reference

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
API_VERSION = f"{GROUP}/{VERSION}"
WORKLOAD_PLURAL = "workloads"
QUEUE_NAME_LABEL = f"{GROUP}/queue-name"
PRIORITY_CLASS_LABEL = f"{GROUP}/priority-class"
POD_SET = "workers"
# Workload condition types and reasons (apis/kueue/v1beta2/workload_types.go)
QUOTA_RESERVED, ADMITTED, EVICTED, FINISHED, REQUEUED = "QuotaReserved", "Admitted", "Evicted", "Finished", "Requeued"
REQUEUED_AFTER = ("Preempted", "NodeFailures")  # eviction reasons after which Kueue's jobframework sets Requeued=True
# Topology Aware Scheduling: what Kueue's TopologyUngater (pkg/controller/tas/topology_ungater.go) finds a pod by
# (the podset label, the workload annotation, a podset-*-topology annotation: pkg/util/tas IsTAS) and the gate it lifts
# once it has written the pod's domain into its nodeSelector (apis/kueue/v1beta2/topology_types.go, pkg/constants).
PODSET_LABEL = f"{GROUP}/podset"
WORKLOAD_ANNOTATION = f"{GROUP}/workload"
TOPOLOGY_GATE = f"{GROUP}/topology"
TOPOLOGY_ANNOTATION = {"required": f"{GROUP}/podset-required-topology", "preferred": f"{GROUP}/podset-preferred-topology"}


def queue_name(job: LLMTrainingJob) -> Optional[str]:
    return job.metadata.labels.get(QUEUE_NAME_LABEL) or None


def priority_class(job: LLMTrainingJob) -> Optional[str]:
    return job.metadata.labels.get(PRIORITY_CLASS_LABEL) or None


def workload_name(job: LLMTrainingJob) -> str:
    """<job>-<hash of its UID>: a namesake job (deleted and created again) never takes the old one's Workload. A job that
    MultiKueue copied here: the Workload it created with it (multikueue.py)."""
    prebuilt = prebuilt_workload_name(job)
    if prebuilt is not None:
        return prebuilt
    digest = hashlib.sha256((job.metadata.uid or "").encode()).hexdigest()[:8]
    return f"{job.metadata.name}-{digest}"


def build_workload(job: LLMTrainingJob, worker: Mapping[str, Any], priority: Optional[int] = None) -> dict[str, Any]:
    """The job's Workload. worker: a rendered worker pod (render.build_worker_pod), whose spec is the podSet's
    template: Kueue reads its resource requests, node selector, affinity and tolerations. priority: the value
    of the WorkloadPriorityClass named by the job's priority-class label (read by the caller)."""
    queue = queue_name(job)
    if queue is None:
        raise ValueError(f"job {job.metadata.name} has no {QUEUE_NAME_LABEL} label")
    pod_set: dict[str, Any] = {"name": POD_SET, "count": job.spec.nodes,
                               "template": {"metadata": {"labels": dict(worker["metadata"].get("labels") or {})}, "spec": worker["spec"]}}
    request = topology_request(job)
    if request is not None:
        pod_set["topologyRequest"] = request
    spec: dict[str, Any] = {"queueName": queue, "podSets": [pod_set]}
    pclass = priority_class(job)
    if pclass is not None:
        spec["priorityClassRef"] = {"group": GROUP, "kind": "WorkloadPriorityClass", "name": pclass}
        if priority is not None:
            spec["priority"] = priority
    meta_labels = labels(job, "workload")
    meta_labels[QUEUE_NAME_LABEL] = queue
    if pclass is not None:
        meta_labels[PRIORITY_CLASS_LABEL] = pclass
    return {
        "apiVersion": API_VERSION,
        "kind": "Workload",
        "metadata": {"name": workload_name(job), "namespace": job.metadata.namespace, "labels": meta_labels,
                     "ownerReferences": [owner_reference(job)]},
        "spec": spec,
    }


def topology_request(job: LLMTrainingJob) -> Optional[dict[str, str]]:
    """The podSet's topologyRequest for spec.gang.topology. podIndexLabel: Kueue's ungater hands out the assigned
    domains in the order of this label, so consecutive ranks (ring all-reduce neighbours) share the closest domains."""
    topology = job.spec.gang.topology
    if topology is None:
        return None
    kind = "required" if topology.required else "preferred"
    return {kind: topology.level, "podIndexLabel": NODE_RANK_LABEL}


# ============================================================================================ reading
def _condition(workload: Mapping[str, Any], type_: str) -> Optional[Mapping[str, Any]]:
    return next((c for c in (workload.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def _is_true(workload: Mapping[str, Any], type_: str) -> bool:
    found = _condition(workload, type_)
    return found is not None and found.get("status") == "True"


@dataclass(frozen=True)
class Admission:
    """What a decision reads from the Workload."""

    exists: bool
    admitted: bool = False  # Admitted=True: the gang may run
    reserved: bool = False  # quota is reserved (status.admission set)
    evicted: Optional[Mapping[str, Any]] = None  # the Evicted=True condition
    finished: bool = False
    cluster_queue: Optional[str] = None
    pending_message: str = ""  # why it waits, as Kueue says it (QuotaReserved=False's message)
    flavors: tuple[str, ...] = ()  # the ResourceFlavors assigned to the workers

    @property
    def may_run(self) -> bool:
        return self.admitted and self.evicted is None and not self.finished


def admission_of(workload: Optional[Mapping[str, Any]]) -> Admission:
    if workload is None:
        return Admission(exists=False)
    status = workload.get("status") or {}
    reserved_condition = _condition(workload, QUOTA_RESERVED)
    pending = reserved_condition.get("message", "") if reserved_condition and reserved_condition.get("status") != "True" else ""
    evicted = _condition(workload, EVICTED)
    return Admission(
        exists=True,
        admitted=_is_true(workload, ADMITTED),
        reserved=bool(status.get("admission")) or _is_true(workload, QUOTA_RESERVED),
        evicted=evicted if evicted is not None and evicted.get("status") == "True" else None,
        finished=_is_true(workload, FINISHED),
        cluster_queue=(status.get("admission") or {}).get("clusterQueue"),
        pending_message=pending,
        flavors=tuple((status.get("admission") or {}).get("flavors") or ()),
    )


def place_on_flavors(pod: dict[str, Any], flavors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The worker pod on the nodes of the ResourceFlavors Kueue assigned (their spec.nodeLabels joined to the pod's
    nodeSelector, their spec.tolerations added), as jobframework does when it starts a job: the quota was
    counted against those nodes. On a conflicting node label the flavor's value wins."""
    spec = dict(pod["spec"])
    selector = dict(spec.get("nodeSelector") or {})
    tolerations = list(spec.get("tolerations") or [])
    for flavor in flavors:
        selector.update((flavor.get("spec") or {}).get("nodeLabels") or {})
        tolerations += [t for t in (flavor.get("spec") or {}).get("tolerations") or [] if t not in tolerations]
    if selector:
        spec["nodeSelector"] = selector
    if tolerations:
        spec["tolerations"] = tolerations
    return {**pod, "spec": spec}


def gate_for_topology(pod: dict[str, Any], job: LLMTrainingJob) -> dict[str, Any]:
    """A worker pod of a job with spec.gang.topology, admitted by Kueue: it carries what the TopologyUngater looks for,
    and is held by the topology gate until the ungater writes its domain (the node labels of the level) into its
    nodeSelector. Without topology the pod is returned as it is."""
    topology = job.spec.gang.topology
    if topology is None:
        return pod
    kind = "required" if topology.required else "preferred"
    meta = dict(pod["metadata"])
    meta["labels"] = {**(meta.get("labels") or {}), PODSET_LABEL: POD_SET}
    meta["annotations"] = {**(meta.get("annotations") or {}), WORKLOAD_ANNOTATION: workload_name(job), TOPOLOGY_ANNOTATION[kind]: topology.level}
    spec = dict(pod["spec"])
    gates = list(spec.get("schedulingGates") or [])
    if {"name": TOPOLOGY_GATE} not in gates:
        gates.append({"name": TOPOLOGY_GATE})
    spec["schedulingGates"] = gates
    return {**pod, "metadata": meta, "spec": spec}


# ============================================================================================ writing
def _set(conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str, now: str, generation: Optional[int]) -> None:
    entry = next((c for c in conditions if c.get("type") == type_), None)
    if entry is None:
        entry = {"type": type_}
        conditions.append(entry)
    if entry.get("status") != status:
        entry["lastTransitionTime"] = now
    entry.update(status=status, reason=reason, message=message[:32768])
    if generation is not None:
        entry["observedGeneration"] = generation


def release_quota_patch(workload: Mapping[str, Any], now: str) -> dict[str, Any]:
    """After an eviction, once no pod of the job is left: clear the quota reservation so that Kueue queues the
    Workload again (what jobframework does with UnsetQuotaReservationWithCondition and SetRequeuedCondition).
    A merge patch of the Workload's status, with its resourceVersion as a precondition: Kueue writes these
    conditions too, and a conflict is retried on the next reconcile."""
    evicted = _condition(workload, EVICTED) or {}
    reason, message = evicted.get("reason", "Evicted"), evicted.get("message", "evicted")
    generation = workload["metadata"].get("generation")
    conditions = [dict(c) for c in (workload.get("status") or {}).get("conditions") or []]
    _set(conditions, REQUEUED, "True" if reason in REQUEUED_AFTER else "False", reason, message, now, generation)
    _set(conditions, QUOTA_RESERVED, "False", "Pending", message, now, generation)
    if any(c.get("type") == ADMITTED for c in conditions):
        _set(conditions, ADMITTED, "False", "NoReservation", "The workload has no reservation", now, generation)
    return {"metadata": {"resourceVersion": workload["metadata"].get("resourceVersion")},
            "status": {"admission": None, "conditions": conditions}}


def finish_patch(workload: Mapping[str, Any], succeeded: bool, message: str, now: str) -> dict[str, Any]:
    """The job ended: Finished=True releases the Workload's quota (jobframework's workload.Finish)."""
    generation = workload["metadata"].get("generation")
    conditions = [dict(c) for c in (workload.get("status") or {}).get("conditions") or []]
    _set(conditions, FINISHED, "True", "Succeeded" if succeeded else "Failed", message, now, generation)
    return {"metadata": {"resourceVersion": workload["metadata"].get("resourceVersion")}, "status": {"conditions": conditions}}


def slim_workload(workload: Mapping[str, Any]) -> dict[str, Any]:
    """What the view keeps of a Workload: enough for admission_of and the two patches above."""
    meta, status = workload["metadata"], workload.get("status") or {}
    keep = ("name", "namespace", "uid", "resourceVersion", "generation", "deletionTimestamp")
    slim_meta: dict[str, Any] = {k: meta[k] for k in keep if k in meta}
    slim_meta["labels"] = {k: v for k, v in (meta.get("labels") or {}).items() if k == JOB_NAME_LABEL}
    slim_meta["ownerReferences"] = [{"uid": ref.get("uid")} for ref in meta.get("ownerReferences") or []]
    slim_status: dict[str, Any] = {"conditions": [dict(c) for c in status.get("conditions") or []]}
    if status.get("admission"):
        assigned = {f for a in status["admission"].get("podSetAssignments") or [] for f in (a.get("flavors") or {}).values()}
        slim_status["admission"] = {"clusterQueue": status["admission"].get("clusterQueue"), "flavors": sorted(assigned)}
    return {"metadata": slim_meta, "status": slim_status}


__all__ = ["Admission", "RenderContext", "admission_of", "build_workload", "finish_patch", "gate_for_topology", "place_on_flavors",
           "release_quota_patch", "slim_workload", "priority_class", "queue_name", "topology_request", "workload_name"]
