"""Kopf handlers: thin. Every trigger funnels into one reconcile of the job, one at a time per job."""

from __future__ import annotations

import threading
from collections import defaultdict

import kopf

from . import metrics
from .api import GROUP, PLURAL, VERSION
from .reconcile import Reconciler
from .render.names import JOB_NAME_LABEL
from .status import Event

_reconciler: Reconciler | None = None
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


def install(reconciler: Reconciler) -> None:
    global _reconciler
    _reconciler = reconciler


def post_event(body: dict, event: Event) -> None:
    kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def reconcile_by_name(namespace: str, name: str) -> None:
    assert _reconciler is not None, "handlers.install() was not called"
    with _locks[(namespace, name)], metrics.RECONCILE_SECONDS.time():  # pod and job events may race
        body = _reconciler.kube.get_job(namespace, name)  # fresh: an event's copy may be stale
        if body is None:
            metrics.record_phase(namespace, name, None)
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
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def job_changed(body, namespace, name, **_) -> None:
    reconcile_by_name(namespace, name)


@kopf.on.event("", "v1", "pods", labels={JOB_NAME_LABEL: kopf.PRESENT})
def pod_event(body, namespace, labels, type, **_) -> None:
    if type is None:  # the initial listing: jobs are resumed by their own handler
        return
    reconcile_by_name(namespace, labels[JOB_NAME_LABEL])


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)  # optional: no finalizer, deletion never waits for us
def job_deleted(namespace, name, logger, **_) -> None:
    metrics.record_phase(namespace, name, None)
    if _reconciler is not None and _reconciler.scraper is not None:
        _reconciler.scraper.forget((namespace, name))
    logger.info("job %s deleted; its children go with it (owner references)", name)
