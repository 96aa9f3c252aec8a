"""When a finished job may be compacted (view.ClusterView.settle): what it still costs until it is deleted or
its TTL fires is then a few hundred bytes, not its pods, its body and an asyncio task (issue 22: 10,000 jobs
of history must fit in the chart's memory limit).

A terminal job's decision (lifecycle._finished) reads its status, its TTL and its pods: the pods only to stop
those cleanPodPolicy says to stop, and to sum them up in the status (ready count, rank 0's final state). Once
a decision of it stops nothing and every pod it owns has ended (a pod with restartPolicy Never that ended
changes no more), and its status, Events and Workload's Finished condition are written, nothing but the TTL's clock or a change of the job
itself can change its next decision.
"""

from __future__ import annotations

from typing import Sequence

from .draft import TERMINAL_PHASES, Decision
from .pods import Pod, is_finished, is_terminating


def is_settled(decision: Decision, pods: Sequence[Pod], *, count_waits: bool) -> bool:
    """True when, once the decision's status and Events are written, the job has nothing left to decide but its
    TTL. count_waits: a change of the ready count is being held back (reconcile.COUNT_DELAY): not written yet."""
    if decision.status.get("phase") not in TERMINAL_PHASES or count_waits:
        return False
    if decision.delete_pods or decision.delete_job or decision.create_pods or decision.create_workload:
        return False
    if decision.delete_workload:  # (a workload_patch, marking a finished job's Workload Finished, is written with the status)
        return False
    return all(is_finished(p) and not is_terminating(p) for p in pods)
