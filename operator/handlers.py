"""Kopf handlers: thin. Each job gets its own task (job_loop.py), started from the job watch and stopped by
the job's DELETED event; pod events only poke that task. No finalizer: deleting a job never waits for the
operator, and owner references let the garbage collector remove its children.
"""

from __future__ import annotations

import kopf

from .api import GROUP, PLURAL, VERSION
from .job_loop import JobLoops
from .render.names import JOB_NAME_LABEL

_loops: JobLoops | None = None


def install(loops: JobLoops) -> None:
    global _loops
    _loops = loops


def _installed() -> JobLoops:
    assert _loops is not None, "handlers.install() was not called"
    return _loops


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(type, namespace, name, meta, status, **_) -> None:
    """Every job, at start-up (the initial listing) and when created, gets its task; a spec edit (runPolicy.suspend)
    wakes it. The operator's own status writes do not."""
    if type == "DELETED":
        _installed().stop(namespace, name)
        return
    _installed().ensure_running(namespace, name)
    if meta.get("generation") != status.get("observedGeneration"):
        _installed().poke(namespace, name)


@kopf.on.event("", "v1", "pods", labels={JOB_NAME_LABEL: kopf.PRESENT})
async def pod_event(namespace, labels, **_) -> None:
    _installed().poke(namespace, labels[JOB_NAME_LABEL])


@kopf.on.cleanup()
async def stop_job_tasks(**_) -> None:
    await _installed().stop_all()
