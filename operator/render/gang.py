"""Gang scheduling: which gang scheduler a job uses, the group object it needs, and what every worker pod carries.

One group per job, named after it, for the job's whole life: a gang restart or a resume after suspend brings
new pods under the same group (the old gang is wholly gone before the new one is created, and the schedulers
count only the live pods that name the group), and an operator restarted mid-way finds the group by name.

    kubernetes    scheduling.k8s.io/v1beta1 Workload + PodGroup (gang minCount); pod spec.schedulingGroup.podGroupName
    volcano       scheduling.volcano.sh/v1beta1 PodGroup (minMember, minResources); pod annotation
                  scheduling.k8s.io/group-name, schedulerName volcano
    coscheduling  scheduling.x-k8s.io/v1alpha1 PodGroup (minMember, minResources); pod label
                  scheduling.x-k8s.io/pod-group, schedulerName of the scheduler-plugins scheduler
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..api import GROUP, KIND, LLMTrainingJob
from .names import RenderContext, object_meta
from .resources import gang_requests

KUBERNETES_API = "scheduling.k8s.io/v1beta1"
VOLCANO_API = "scheduling.volcano.sh/v1beta1"
COSCHEDULING_API = "scheduling.x-k8s.io/v1alpha1"
API_OF = {"kubernetes": KUBERNETES_API, "volcano": VOLCANO_API, "coscheduling": COSCHEDULING_API}
GANG_APIS = tuple(API_OF.values())
GANG_KINDS = ("Workload", "PodGroup")

VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"  # volcano.sh/apis KubeGroupNameAnnotationKey
COSCHEDULING_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"  # scheduler-plugins apis/scheduling/v1alpha1 PodGroupLabel
WORKLOAD_TEMPLATE = "workers"  # the Workload's one pod group template
# A DeepSpeed gang lost one worker is lost whole (the operator restarts it): the scheduler's preemption should weigh
# the whole gang as one unit, not take one worker as if the rest were spared.
DISRUPT_ALL: dict[str, dict[str, str]] = {"all": {}}  # the scheduler evicts the gang as one unit

REASON_OF = {"kubernetes": "KubernetesWorkload", "volcano": "VolcanoPodGroup", "coscheduling": "CoschedulingPodGroup"}
DISABLED, UNAVAILABLE = "Disabled", "GangSchedulingUnavailable"


@dataclass(frozen=True)
class GangPlan:
    """The gang scheduler a job uses, and what the GangScheduled condition says about it."""

    scheduler: str  # kubernetes | volcano | coscheduling | none
    min_member: int
    reason: str
    message: str
    available: bool = True  # False: the API server does not serve the group object it needs (the job fails)
    topology_key: Optional[str] = None  # the PodGroup's schedulingConstraints.topology key (render/topology.py)

    @property
    def grouped(self) -> bool:
        return self.scheduler != "none"


@dataclass(frozen=True)
class PodGangFields:
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)


def default_gang_scheduler(configured: str, gang_apis: frozenset[str]) -> str:
    """The scheduler of a job that names none: the operator's --gang-scheduler, or with `auto` Kubernetes' own
    when the API server serves its Workload API, else none."""
    if configured != "auto":
        return configured
    return "kubernetes" if KUBERNETES_API in gang_apis else "none"


def gang_name(job: LLMTrainingJob) -> str:
    return job.metadata.name


def plan_gang(job: LLMTrainingJob, ctx: RenderContext) -> GangPlan:
    chosen = job.spec.gang.scheduler
    scheduler = chosen or default_gang_scheduler(ctx.default_gang_scheduler, ctx.gang_apis)
    nodes = job.spec.nodes
    members = job.spec.gang.min_available or nodes
    if scheduler == "none":
        if chosen == "none":
            return GangPlan("none", nodes, DISABLED, "spec.gang.scheduler is none: each worker pod is scheduled on its own")
        if ctx.default_gang_scheduler == "none":
            return GangPlan("none", nodes, DISABLED, "the operator's default gang scheduler is none: each worker pod is scheduled on its own")
        return GangPlan("none", nodes, UNAVAILABLE, f"the API server does not serve {KUBERNETES_API} Workload and PodGroup (feature gate "
                        "GenericWorkload): each worker pod is scheduled on its own, and a gang that does not fit may be bound in part")
    api = API_OF[scheduler]
    if api not in ctx.gang_apis:
        return GangPlan(scheduler, members, UNAVAILABLE, f"gang scheduler {scheduler} needs {api} PodGroups, which the API server did not serve "
                        "when the operator started: install it (and restart the operator), or set spec.gang.scheduler", available=False)
    group = {"kubernetes": f"Workload and PodGroup {gang_name(job)}"}.get(scheduler, f"{scheduler} PodGroup {gang_name(job)}")
    topology = job.spec.gang.topology
    # kube-scheduler's topology constraint is a hard one: it serves `required` only (preferred is Kueue's alone)
    key = topology.required if topology is not None and scheduler == "kubernetes" and ctx.pod_group_topology else None
    return GangPlan(scheduler, members, REASON_OF[scheduler], f"{group}: {members} of {nodes} workers are bound together or none is",
                    topology_key=key)


# --------------------------------------------------------------------------------------------- objects
def _priority(job: LLMTrainingJob) -> dict[str, str]:
    name = job.spec.pod_template.priority_class_name
    return {"priorityClassName": name} if name else {}


def build_workload(job: LLMTrainingJob, plan: GangPlan) -> dict:
    return {
        "apiVersion": KUBERNETES_API,
        "kind": "Workload",
        "metadata": object_meta(job, gang_name(job), role="gang"),
        "spec": {
            "controllerRef": {"apiGroup": GROUP, "kind": KIND, "name": job.metadata.name},
            "podGroupTemplates": [{"name": WORKLOAD_TEMPLATE, "schedulingPolicy": {"gang": {"minCount": plan.min_member}},
                                   "disruptionMode": DISRUPT_ALL, **_priority(job)}],
        },
    }


def build_kubernetes_pod_group(job: LLMTrainingJob, plan: GangPlan) -> dict:
    return {
        "apiVersion": KUBERNETES_API,
        "kind": "PodGroup",
        "metadata": object_meta(job, gang_name(job), role="gang"),
        "spec": {
            "workloadRef": {"workloadName": gang_name(job), "templateName": WORKLOAD_TEMPLATE},
            "schedulingPolicy": {"gang": {"minCount": plan.min_member}},
            **({"schedulingConstraints": {"topology": [{"key": plan.topology_key}]}} if plan.topology_key else {}),
            "disruptionMode": DISRUPT_ALL,
            **_priority(job),
        },
    }


# ------------------------------------------------------------------------- does the API server keep topology?
# kube-apiserver drops a field whose feature gate is off (the type's dropDisabledFields) rather than refusing it, and
# its OpenAPI schema lists the field either way: only an object as stored tells. The operator's start-up dry-runs this
# PodGroup (nothing is persisted) and reads whether schedulingConstraints.topology survived (main.py).
TOPOLOGY_PROBE_KEY = "kubernetes.io/hostname"


def topology_probe_pod_group(namespace: str) -> dict:
    return {
        "apiVersion": KUBERNETES_API,
        "kind": "PodGroup",
        "metadata": {"generateName": "llmto-topology-probe-", "namespace": namespace},
        "spec": {
            "workloadRef": {"workloadName": "llmto-topology-probe", "templateName": WORKLOAD_TEMPLATE},
            "schedulingPolicy": {"gang": {"minCount": 1}},
            "schedulingConstraints": {"topology": [{"key": TOPOLOGY_PROBE_KEY}]},
        },
    }


def keeps_topology(stored: dict) -> bool:
    """The dry-run's answer: the API server kept the probe's schedulingConstraints.topology."""
    topology = ((stored.get("spec") or {}).get("schedulingConstraints") or {}).get("topology") or []
    return any(t.get("key") == TOPOLOGY_PROBE_KEY for t in topology)


def build_volcano_pod_group(job: LLMTrainingJob, plan: GangPlan) -> dict:
    """minResources: what minMember workers request together, which Volcano's enqueue checks against its queue."""
    return {
        "apiVersion": VOLCANO_API,
        "kind": "PodGroup",
        "metadata": object_meta(job, gang_name(job), role="gang"),
        "spec": {"minMember": plan.min_member, "minResources": gang_requests(job, plan.min_member), **_priority(job)},
    }


def build_coscheduling_pod_group(job: LLMTrainingJob, plan: GangPlan) -> dict:
    return {
        "apiVersion": COSCHEDULING_API,
        "kind": "PodGroup",
        "metadata": object_meta(job, gang_name(job), role="gang"),
        "spec": {"minMember": plan.min_member, "minResources": gang_requests(job, plan.min_member)},
    }


def build_gang_objects(job: LLMTrainingJob, plan: GangPlan) -> list[dict]:
    """The job's group objects, in creation order (the Workload before the PodGroup that refers to it)."""
    if plan.scheduler == "kubernetes":
        return [build_workload(job, plan), build_kubernetes_pod_group(job, plan)]
    if plan.scheduler == "volcano":
        return [build_volcano_pod_group(job, plan)]
    if plan.scheduler == "coscheduling":
        return [build_coscheduling_pod_group(job, plan)]
    return []


def pod_gang_fields(job: LLMTrainingJob, plan: GangPlan, ctx: RenderContext) -> PodGangFields:
    """What a worker pod carries to name its group. podTemplate.schedulerName, when set, wins over the default
    scheduler names (a cluster may run Volcano or the coscheduling plugin under another name)."""
    own_scheduler = job.spec.pod_template.scheduler_name
    if plan.scheduler == "kubernetes":
        return PodGangFields(spec={"schedulingGroup": {"podGroupName": gang_name(job)}})
    if plan.scheduler == "volcano":
        return PodGangFields(annotations={VOLCANO_GROUP_ANNOTATION: gang_name(job)},
                             spec={"schedulerName": own_scheduler or ctx.volcano_scheduler_name})
    if plan.scheduler == "coscheduling":
        return PodGangFields(labels={COSCHEDULING_GROUP_LABEL: gang_name(job)},
                             spec={"schedulerName": own_scheduler or ctx.coscheduling_scheduler_name})
    return PodGangFields()
