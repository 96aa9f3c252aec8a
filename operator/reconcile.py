"""One reconcile of one job: read the job and its pods from the watched view → decide (lifecycle.py, pure) → act:
create the gang, write the status (only on change, and before stopping any pod), post Events, stop pods,
delete an expired job. A reconcile that would change nothing makes no request.

Safe to run any number of times, also after an operator killed mid-way: children have deterministic names
and are created only if absent, the decision depends only on what the API server holds (the view is fed by
its watches, and every write's response is merged back), and owner references let the garbage collector
remove the children with the job. A job whose namespace is being deleted is left to the garbage collector.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping, Optional

from kubernetes.client.exceptions import ApiException

from . import kueue, metrics, multikueue
from .compaction import is_settled
from .api import SpecError, parse_job
from .clock import rfc3339, utcnow
from .conditions import FAILED, set_condition
from .health import set_health_conditions
from .kube import Kube, NamespaceTerminating
from .lifecycle import Decision, Event, LifecycleSettings, decide, status_patch
from .placement import nodes_of, placement
from .pods import name_of, restart_of
from .progress import ScrapeTarget, scrape_target
from .render import RenderContext, build_worker_pod, render_children
from .render.gang import plan_gang
from .view import ClusterView
from .writers import CREATE, Writers, finish_priority

log = logging.getLogger(__name__)

EventSink = Callable[[dict, Event], None]
WRITE_CONCURRENCY = 16  # writes in flight at once, all jobs together (reconciles wait for the writer threads)
COUNT_KEYS = frozenset({"readyNodes", "nodesReady"})
COUNT_DELAY = 2.0  # seconds a change of only the ready count may wait, so one write covers a gang coming up


@dataclass
class Outcome:
    decision: Decision
    scrape: Optional[ScrapeTarget]  # rank 0's metrics, while the gang runs
    finishing: Optional[Future] = None  # the decision's status write, Events and stops; the next reconcile waits for it
    settled: bool = False  # once `finishing` is done: a finished job with nothing left to decide but its TTL (compaction.is_settled)


@dataclass
class Reconciler:
    kube: Kube
    view: ClusterView
    ctx: RenderContext
    emit: EventSink
    generate_ssh_keys: Callable[[], dict[str, str]]
    settings: LifecycleSettings = LifecycleSettings()
    writers: Writers = field(default_factory=lambda: Writers(WRITE_CONCURRENCY))
    _counts_pending: dict[tuple[str, str], float] = field(default_factory=dict)  # job → since when (monotonic)
    _node_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # node → labels, read once (status.placement)
    _nodes_unreadable: bool = False  # the operator may not read nodes (an older chart's rules): no placement, said once

    def reconcile_by_name(self, namespace: str, name: str, observed_since: datetime, reported: Optional[Mapping[str, Any]] = None) -> Optional[Outcome]:
        """None when the job is gone, going, or its namespace is (its children are left to the garbage collector)."""
        with metrics.RECONCILE_SECONDS.time():
            body = self.view.job(namespace, name)
            if body is None and self.view.is_settled(namespace, name):
                body = self._recall_settled(namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp") or self.view.is_terminating(namespace):
                self._forget(namespace, name)
                return None
            try:
                outcome = self.reconcile(body, observed_since, reported)
            except NamespaceTerminating:
                self._leave_to_garbage_collector(namespace, name)
                self._forget(namespace, name)
                return None
            except Exception:
                metrics.RECONCILES.labels(result="error").inc()
                raise
            metrics.RECONCILES.labels(result="ok").inc()
            return outcome

    def _recall_settled(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        """A settled job woken by its TTL: the view kept only its digest, so the job is read once (None: gone)."""
        uid = self.view.settled_uid(namespace, name)
        fetched = self.kube.get_job(namespace, name)
        if fetched is None or fetched["metadata"].get("uid") != uid:
            if fetched is None:  # deleted meanwhile, and its DELETED event not seen yet
                self.view.forget_job({"metadata": {"namespace": namespace, "name": name, "uid": uid}})
            return self.view.job(namespace, name)
        self.view.recall_job(fetched)
        return self.view.job(namespace, name)

    def _leave_to_garbage_collector(self, namespace: str, name: str) -> None:
        log.info("namespace %s is being deleted: leaving job %s to the garbage collector", namespace, name)
        self.view.mark_terminating(namespace)

    def _forget(self, namespace: str, name: str) -> None:
        metrics.forget_job(namespace, name)
        self._counts_pending.pop((namespace, name), None)

    def reconcile(self, body: dict[str, Any], observed_since: datetime, reported: Optional[Mapping[str, Any]] = None) -> Outcome:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        previous = body.get("status") or {}
        try:
            job = parse_job({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
        except SpecError as exc:
            return Outcome(self._reject(body, previous, exc), None)

        if job.spec.managed_by is not None:
            return Outcome(self._dispatched(job, previous), None)
        gang_plan = plan_gang(job, self.ctx)
        if self.settings.kueue and multikueue.prebuilt_workload_name(job) and self.view.workload(namespace, name, meta.get("uid")) is None:
            self._adopt_prebuilt_workload(job)

        def decide_now() -> tuple[list[dict], Decision]:
            pods = self.view.pods(namespace, name, meta.get("uid"))
            workload = self.view.workload(namespace, name, meta.get("uid")) if self.settings.kueue else None
            return pods, decide(job, meta.get("generation"), pods, previous, utcnow(), observed_since=observed_since,
                                reported=reported, settings=self.settings, gang_plan=gang_plan, workload=workload)

        pods, decision = decide_now()
        self._record_placement(job, pods, decision)
        if decision.create_workload:
            self._create_workload(job, decision.status["restarts"])
            pods, decision = decide_now()  # with the Workload just created (merged into the view)
        if decision.create_pods:
            self._create_gang(job, pods, restart=decision.status["restarts"])
            pods, decision = decide_now()  # with the gang just created (merged into the view)
            self._record_placement(job, pods, decision)

        patch, wake = self._status_to_write(namespace, name, previous, decision.status)
        if wake is not None:
            decision.wake_after = min(wake, decision.wake_after if decision.wake_after is not None else wake)
        running = decision.status.get("phase") == "Running"
        target = scrape_target(pods, decision.status["restarts"], job.spec.monitoring.port) if running else None
        if not (patch or decision.events or decision.delete_pods or decision.delete_job or decision.workload_patch or decision.delete_workload):
            metrics.record(namespace, name, meta.get("creationTimestamp"), previous, decision.status)
            return Outcome(decision, target, settled=is_settled(decision, pods, count_waits=wake is not None))
        return Outcome(decision, target, self.writers.submit(finish_priority(patch), self._finish, body, patch, decision),
                       settled=is_settled(decision, pods, count_waits=wake is not None))

    def _finish(self, body: dict, patch: dict, decision: Decision) -> None:
        """Carry out the rest of a decision, in order: the status first, so that an operator killed from here
        on finds what was decided; then Events; then stop pods (one by one: this runs on a writer thread)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            if patch:
                self.view.observe_job(self.kube.patch_job_status(namespace, name, patch))
            for event in decision.events:
                self.emit(body, event)
            if decision.delete_pods:
                log.info("stopping pods %s", ", ".join(decision.delete_pods), extra={"job": name})
            for pod in decision.delete_pods:
                self._stop_pod(namespace, pod)
            if decision.workload_patch is not None or decision.delete_workload:
                self._settle_workload(job_name=name, namespace=namespace, owner_uid=meta.get("uid"), decision=decision)
            if decision.delete_job:
                log.info("deleting job: ttlSecondsAfterFinished passed", extra={"job": name})
                self.kube.delete_job(namespace, name, meta["uid"])
        except NamespaceTerminating:
            self._leave_to_garbage_collector(namespace, name)
            return
        except Exception:
            metrics.RECONCILES.labels(result="error").inc()
            raise
        metrics.record(namespace, name, meta.get("creationTimestamp"), body.get("status") or {}, decision.status)

    def _status_to_write(self, namespace: str, name: str, previous: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[dict, Optional[float]]:
        """The status patch to write now, and when to look again if a change of only the ready count waits."""
        patch = status_patch(previous, status)
        key = (namespace, name)
        if patch and set(patch) <= COUNT_KEYS:
            since = self._counts_pending.setdefault(key, time.monotonic())
            remaining = since + COUNT_DELAY - time.monotonic()
            if remaining > 0:
                return {}, remaining
        self._counts_pending.pop(key, None)
        return patch, None

    def _create_gang(self, job, pods: list[dict], restart: int) -> None:
        # Fresh keys each time are cheap; only the first Secret created is kept (create-if-absent).
        ssh_keys = self.generate_ssh_keys() if job.spec.launcher.mode == "ssh" else None
        existing = {name_of(p) for p in pods}
        children = [c for c in render_children(job, self.ctx, ssh_keys=ssh_keys, restart=restart)
                    if not (c["kind"] == "Pod" and c["metadata"]["name"] in existing)]
        flavors = self._admitted_flavors(job)
        if flavors:
            children = [kueue.gate_for_topology(kueue.place_on_flavors(c, flavors), job) if c["kind"] == "Pod" else c for c in children]

        def create(child: dict) -> bool:
            was_created, current = self.kube.create_if_absent(child)
            if child["kind"] == "Pod":
                self.view.observe_pod(current)  # the view need not wait for the watch to see it
            return was_created

        # What the pods mount, and the group they name, exist before them (the Workload before its PodGroup). The
        # group is created with every gang and kept for the job's life (render/gang.py): a restart finds it.
        for kinds in ({"ConfigMap", "Service", "Secret", "Workload"}, {"PodGroup"}, {"Pod"}):
            batch = [c for c in children if c["kind"] in kinds]
            if not batch:
                continue
            created = [f"{c['kind']} {c['metadata']['name']}" for c, was_created in zip(batch, self._in_parallel(create, batch)) if was_created]
            if created:
                log.info("created %s", ", ".join(created), extra={"job": job.metadata.name})

    def _record_placement(self, job, pods: list[dict], decision: Decision) -> None:
        """status.placement of a job with spec.gang.topology, once its gang is bound (placement.py)."""
        topology = job.spec.gang.topology
        if topology is None or self._nodes_unreadable:
            return
        gang = [p for p in pods if restart_of(p) == decision.status["restarts"]]
        for node in nodes_of(gang):
            if node not in self._node_labels:
                try:
                    self._node_labels[node] = self.kube.node_labels(node)
                except ApiException as exc:
                    if exc.status == 403:
                        self._nodes_unreadable = True
                        log.warning("may not read nodes (RBAC get nodes): status.placement is not recorded")
                        return
                    if exc.status != 404:  # a node gone meanwhile has no placement to tell
                        raise
        line = placement(topology.level, job.spec.nodes, gang, self._node_labels)
        if line is not None:
            decision.status["placement"] = line

    def _dispatched(self, job, previous: Mapping[str, Any]) -> Decision:
        """spec.managedBy (MultiKueue, on the manager cluster): Kueue runs a copy of the job on a worker cluster and copies
        its status back here, so the operator only creates the job's Workload (which MultiKueue dispatches) and never
        creates pods nor writes the status."""
        meta = job.metadata
        has_workload = self.view.workload(meta.namespace, meta.name, meta.uid) is not None
        if self.settings.kueue and multikueue.manager_creates_workload(kueue.queue_name(job), has_workload, previous):
            self._create_workload(job, int(previous.get("restarts") or 0))
        return Decision(status=dict(previous))

    def _adopt_prebuilt_workload(self, job) -> None:
        """MultiKueue's Workload for a job it copied here (multikueue.py): made the job's, then seen by the view."""
        meta = job.metadata
        name = multikueue.prebuilt_workload_name(job) or ""
        workload = self.kube.get_workload(meta.namespace, name)
        plan = multikueue.adoption(job, workload)
        if workload is None:
            return
        if plan.action == multikueue.ADOPT:
            workload = self.kube.patch_workload(meta.namespace, name, multikueue.adoption_patch(job, workload))
            log.info("%s", plan.message, extra={"job": meta.name})
        elif plan.action == multikueue.FOREIGN:
            log.warning("%s", plan.message, extra={"job": meta.name})
        if plan.action in (multikueue.ADOPT, multikueue.USE):
            self.view.observe_workload(workload)

    def _admitted_flavors(self, job) -> list[dict]:
        """The ResourceFlavors Kueue admitted the job's Workload on (none for a job Kueue does not queue)."""
        if not self.settings.kueue:
            return []
        workload = self.view.workload(job.metadata.namespace, job.metadata.name, job.metadata.uid)
        admission = kueue.admission_of(workload)
        return [self.kube.resource_flavor(name) for name in admission.flavors] if admission.may_run else []

    def _create_workload(self, job, restart: int) -> None:
        """The job's Kueue Workload: the podSet's template is the worker pod the gang would get."""
        pclass = kueue.priority_class(job)
        try:
            priority = self.kube.workload_priority(pclass) if pclass else None
        except ApiException as exc:
            if exc.status == 404:  # said on the job, and retried with backoff (the class may be created later)
                meta = job.metadata
                self.emit({"metadata": {"namespace": meta.namespace, "name": meta.name, "uid": meta.uid}},
                          Event("Warning", "WorkloadPriorityClassNotFound", f"WorkloadPriorityClass {pclass} (label {kueue.PRIORITY_CLASS_LABEL}) "
                                "does not exist: the job cannot be queued until it does"))
            raise
        workload = kueue.build_workload(job, build_worker_pod(job, 0, self.ctx, restart), priority)
        created, current = self.kube.create_if_absent(workload)
        self.view.observe_workload(current)
        if created:
            log.info("created Workload %s in LocalQueue %s", workload["metadata"]["name"], kueue.queue_name(job), extra={"job": job.metadata.name})

    def _settle_workload(self, job_name: str, namespace: str, owner_uid: Optional[str], decision: Decision) -> None:
        """Release the Workload's quota (after an eviction), mark it Finished, or delete it (suspended)."""
        workload = self.view.workload(namespace, job_name, owner_uid)
        if workload is None:
            return
        name = workload["metadata"]["name"]
        if decision.delete_workload:
            log.info("deleting Workload %s: the job is suspended", name, extra={"job": job_name})
            self.kube.delete_workload(namespace, name)
            self.view.observe_workload(workload, deleted=True)
        elif decision.workload_patch is not None:
            self.view.observe_workload(self.kube.patch_workload_status(namespace, name, decision.workload_patch))

    def _stop_pod(self, namespace: str, name: str) -> None:
        pod = self.kube.delete_pod(namespace, name)
        if pod is not None:  # terminating (graceful), or already gone (deleted at once: nothing ran on a node)
            self.view.observe_pod(pod, deleted=not pod["metadata"].get("deletionTimestamp"))

    def _in_parallel(self, call: Callable[[Any], Any], items: list) -> list:
        """call(item) for every item on the writer threads, first in line; the results in order. Every call
        finishes before the first error is raised (what was created is known). Never from a writer thread."""
        futures = [self.writers.submit(CREATE, call, item) for item in items]
        errors = [f.exception() for f in futures]
        for error in errors:
            if isinstance(error, NamespaceTerminating):
                raise error
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    def _reject(self, body: dict, previous: dict, exc: SpecError) -> Decision:
        """A spec the API server accepted but we cannot run (e.g. an older CRD is installed)."""
        meta = body["metadata"]
        conditions = [dict(c) for c in previous.get("conditions") or []]
        message = "; ".join(exc.problems)[:1024]
        now = rfc3339(utcnow())
        set_condition(conditions, FAILED, "True", "InvalidSpec", message, now, meta.get("generation"))
        set_health_conditions(conditions, "Failed", now, meta.get("generation"))
        status = {"phase": "Failed", "conditions": conditions, "observedGeneration": meta.get("generation")}
        decision = Decision(status=status, events=[Event("Warning", "InvalidSpec", message)])
        patch = status_patch(previous, {**previous, **status})
        if patch:
            self.view.observe_job(self.kube.patch_job_status(meta["namespace"], meta["name"], patch))
            self.emit(body, decision.events[0])
        return decision


__all__ = ["Outcome", "Reconciler"]
