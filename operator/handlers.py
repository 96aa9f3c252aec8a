"""Kopf handlers: thin. Watch events feed the operator's view of the cluster and wake the jobs' tasks
(job_loop.py); each job's task is started from the job watch and stopped by the job's DELETED event. No
finalizer: deleting a job never waits for the operator, and owner references let the garbage collector
remove its children. The pods' events take a shorter way, past Kopf's per-object machinery (pod_watch.py).
"""

from __future__ import annotations

import kopf

from .api import GROUP, PLURAL, VERSION
from .job_loop import JobLoops
from .kueue import GROUP as KUEUE_GROUP
from .kueue import VERSION as KUEUE_VERSION
from .kueue import WORKLOAD_PLURAL
from .render.names import JOB_NAME_LABEL

_loops: JobLoops | None = None


def install(loops: JobLoops, kueue: bool = False) -> None:
    global _loops
    _loops = loops
    if kueue:  # --kueue: the jobs' Workloads (RBAC for them is granted only then: rbac-rules.yaml's kueue rules)
        kopf.on.event(KUEUE_GROUP, KUEUE_VERSION, WORKLOAD_PLURAL, labels={JOB_NAME_LABEL: kopf.PRESENT})(workload_event)


async def workload_event(type, event, **_) -> None:
    """Kueue admitted, evicted or finished a job's Workload (a handler only with --kueue)."""
    _installed().on_workload(type, event["object"])


def _installed() -> JobLoops:
    assert _loops is not None, "handlers.install() was not called"
    return _loops


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(type, event, **_) -> None:
    _installed().on_job(type, event["object"])


@kopf.on.event("", "v1", "namespaces")
async def namespace_event(type, event, **_) -> None:
    """A namespace being deleted: its jobs are left to the garbage collector, not failed or restarted."""
    _installed().on_namespace(type, event["object"])


@kopf.on.cleanup()
async def stop_job_tasks(**_) -> None:
    await _installed().stop_all()
