"""Kopf handlers: thin. Every trigger funnels into one reconcile of the job, one at a time per job.

No delete handler: owner references let the garbage collector remove a job's children, and a
reconcile that finds its job gone forgets it (no finalizer ever delays a deletion).
"""

from __future__ import annotations

import threading
from collections import defaultdict

import kopf

from . import metrics
from .api import GROUP, PLURAL, VERSION
from .kube import ForeignChild
from .reconcile import Reconciler
from .render.names import JOB_NAME_LABEL

_reconciler: Reconciler | None = None
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


def install(reconciler: Reconciler) -> None:
    global _reconciler
    _reconciler = reconciler


def reconcile_by_name(namespace: str, name: str) -> None:
    assert _reconciler is not None, "handlers.install() was not called"
    with _locks[(namespace, name)], metrics.RECONCILE_SECONDS.time():  # pod and job events may race
        body = _reconciler.kube.get_job(namespace, name)  # fresh: an event's copy may be stale
        if body is None:
            metrics.record_phase(namespace, name, None)
            if _reconciler.scraper is not None:
                _reconciler.scraper.forget((namespace, name))
            return
        try:
            observation = _reconciler.reconcile(body)
        except Exception:
            metrics.RECONCILES.labels(result="error").inc()
            raise
        metrics.RECONCILES.labels(result="ok").inc()
        if observation is not None:
            metrics.record_phase(namespace, name, observation.status.get("phase"))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)  # no update handler: the spec is immutable (a CEL rule)
def job_changed(body, namespace, name, **_) -> None:
    try:
        reconcile_by_name(namespace, name)
    except ForeignChild as exc:  # Kopf retries: the namesake's children are being garbage-collected
        raise kopf.TemporaryError(str(exc), delay=5) from exc


@kopf.on.event("", "v1", "pods", labels={JOB_NAME_LABEL: kopf.PRESENT})
def pod_event(namespace, labels, type, logger, **_) -> None:
    if type is None:  # the initial listing: jobs are resumed by their own handler
        return
    try:
        reconcile_by_name(namespace, labels[JOB_NAME_LABEL])
    except ForeignChild as exc:  # the job's own handler retries
        logger.info("%s", exc)
