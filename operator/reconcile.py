"""One reconcile of one job: read the job and its pods → decide (lifecycle.py, pure) → act: create the gang,
write the status (only on change, and before stopping any pod), post Events, stop pods, delete an expired job.

Safe to run any number of times, also after an operator killed mid-way: children have deterministic names
and are created only if absent, the decision depends only on what the API server holds, and owner
references let the garbage collector remove the children with the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping, Optional

from . import metrics
from .api import SpecError, parse_job
from .clock import rfc3339, utcnow
from .conditions import FAILED, set_condition
from .kube import Kube
from .lifecycle import Decision, Event, LifecycleSettings, decide, status_patch
from .pods import name_of
from .progress import ScrapeTarget, scrape_target
from .render import RenderContext, render_children

log = logging.getLogger(__name__)

EventSink = Callable[[dict, Event], None]


@dataclass
class Outcome:
    decision: Decision
    scrape: Optional[ScrapeTarget]  # rank 0's metrics, while the gang runs


@dataclass
class Reconciler:
    kube: Kube
    ctx: RenderContext
    emit: EventSink
    generate_ssh_keys: Callable[[], dict[str, str]]
    settings: LifecycleSettings = LifecycleSettings()

    def reconcile_by_name(self, namespace: str, name: str, observed_since: datetime, reported: Optional[Mapping[str, Any]] = None) -> Optional[Outcome]:
        """None when the job is gone (or going: its children are left to the garbage collector)."""
        with metrics.RECONCILE_SECONDS.time():
            body = self.kube.get_job(namespace, name)  # fresh: an event's copy may be stale
            if body is None or body["metadata"].get("deletionTimestamp"):
                metrics.forget_job(namespace, name)
                return None
            try:
                outcome = self.reconcile(body, observed_since, reported)
            except Exception:
                metrics.RECONCILES.labels(result="error").inc()
                raise
            metrics.RECONCILES.labels(result="ok").inc()
            return outcome

    def reconcile(self, body: dict[str, Any], observed_since: datetime, reported: Optional[Mapping[str, Any]] = None) -> Outcome:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        previous = body.get("status") or {}
        try:
            job = parse_job({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
        except SpecError as exc:
            return Outcome(self._reject(body, previous, exc), None)

        def decide_now(pods: list[dict]) -> Decision:
            return decide(job, meta.get("generation"), pods, previous, utcnow(), observed_since=observed_since, reported=reported, settings=self.settings)

        pods = self._owned_pods(job)
        decision = decide_now(pods)
        if decision.create_pods:
            self._create_gang(job, body, pods, restart=decision.status["restarts"])
            pods = self._owned_pods(job)
            decision = decide_now(pods)  # with the gang just created

        patch = status_patch(previous, decision.status)
        if patch:  # first, so that an operator killed from here on finds what was decided
            self.kube.patch_job_status(namespace, name, patch)
        for event in decision.events:
            self.emit(body, event)
        for pod_name in decision.delete_pods:
            log.info("stopping pod %s", pod_name, extra={"job": name})
            self.kube.delete_pod(namespace, pod_name)
        if decision.delete_job:
            log.info("deleting job: ttlSecondsAfterFinished passed", extra={"job": name})
            self.kube.delete_job(namespace, name, meta["uid"])
        metrics.record(namespace, name, meta.get("creationTimestamp"), previous, decision.status)
        running = decision.status.get("phase") == "Running"
        target = scrape_target(pods, decision.status["restarts"], job.spec.monitoring.port) if running else None
        return Outcome(decision, target)

    def _owned_pods(self, job) -> list[dict]:
        """The job's pods: labelled for it *and* owned by this incarnation (not a deleted namesake's)."""
        uid = job.metadata.uid
        return [p for p in self.kube.list_job_pods(job.metadata.namespace, job.metadata.name)
                if any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences", []))]

    def _create_gang(self, job, body, pods: list[dict], restart: int) -> None:
        # Fresh keys each time are cheap; only the first Secret created is kept (create-if-absent).
        ssh_keys = self.generate_ssh_keys() if job.spec.launcher.mode == "ssh" else None
        existing = {name_of(p) for p in pods}
        created = []
        for child in render_children(job, self.ctx, ssh_keys=ssh_keys, restart=restart):
            if child["kind"] == "Pod" and child["metadata"]["name"] in existing:
                continue
            if self.kube.create_if_absent(child):
                created.append(f"{child['kind']} {child['metadata']['name']}")
        if created:
            log.info("created %s", ", ".join(created), extra={"job": job.metadata.name})
            self.emit(body, Event("Normal", "Created", "created " + ", ".join(created)))

    def _reject(self, body: dict, previous: dict, exc: SpecError) -> Decision:
        """A spec the API server accepted but we cannot run (e.g. an older CRD is installed)."""
        meta = body["metadata"]
        conditions = [dict(c) for c in previous.get("conditions") or []]
        message = "; ".join(exc.problems)[:1024]
        set_condition(conditions, FAILED, "True", "InvalidSpec", message, rfc3339(utcnow()), meta.get("generation"))
        status = {"phase": "Failed", "conditions": conditions, "observedGeneration": meta.get("generation")}
        decision = Decision(status=status, events=[Event("Warning", "InvalidSpec", message)])
        patch = status_patch(previous, {**previous, **status})
        if patch:
            self.kube.patch_job_status(meta["namespace"], meta["name"], patch)
            self.emit(body, decision.events[0])
        return decision


__all__ = ["Outcome", "Reconciler"]
