"""spec.gang.topology: which placement path honours it, and what the TopologyPlaced condition (conditions.py) says. Pure.

    Kueue         the job is queued by Kueue (its queue-name label, operator --kueue): the Workload's podSet carries
                  topologyRequest and the pods the topology gate (kueue.py); Kueue's TAS picks the domain.
    PodGroup      gang.scheduler kubernetes and an API server that serves PodGroup spec.schedulingConstraints.topology
                  (kube 1.36+, alpha gate TopologyAwareWorkloadScheduling): kube-scheduler keeps the gang in one domain.
                  Its constraint is a hard one, so it serves `required` only.
    neither       required: the job fails (TopologyUnavailable); preferred: the gang runs without it, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..api import LLMTrainingJob
from .gang import GangPlan

UNAVAILABLE = "TopologyUnavailable"
KUEUE, POD_GROUP = "KueueTopologyAwareScheduling", "PodGroupTopology"


@dataclass(frozen=True)
class TopologyPlan:
    reason: str
    message: str
    honoured: bool  # a placement path serves it
    fails: bool = False  # required and not honoured: the job fails


def plan_topology(job: LLMTrainingJob, gang: GangPlan, queued: bool) -> Optional[TopologyPlan]:
    """None for a job without spec.gang.topology. queued: Kueue queues the job."""
    topology = job.spec.gang.topology
    if topology is None:
        return None
    kind = "required" if topology.required else "preferred"
    field = f"spec.gang.topology.{kind} ({topology.level})"
    if queued:
        return TopologyPlan(KUEUE, f"{field}: Kueue's Topology Aware Scheduling places the gang (the Workload's topologyRequest)", True)
    if gang.topology_key is not None:
        return TopologyPlan(POD_GROUP, f"{field}: PodGroup {job.metadata.name} keeps the gang in one domain (schedulingConstraints.topology)", True)
    why = ("neither Kueue queues the job (label kueue.x-k8s.io/queue-name, operator --kueue) nor does the API server serve "
           "PodGroup schedulingConstraints.topology for gang.scheduler kubernetes (feature gate TopologyAwareWorkloadScheduling)")
    if kind == "required":
        return TopologyPlan(UNAVAILABLE, f"{field} cannot be honoured: {why}", False, fails=True)
    return TopologyPlan(UNAVAILABLE, f"{field} is not honoured, the gang runs without it: {why}", False)
