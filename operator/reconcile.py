"""One reconcile of one job: desired children → apply → observe pods → status (only on change) → clean up.

Safe to run any number of times, concurrently with a killed predecessor's leftovers: children
have deterministic names and are created only if absent, so a restart converges without
duplicates, and owner references let the garbage collector remove them with the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from .api import SpecError, parse_job
from .kube import Kube
from .progress import ProgressScraper
from .render import RenderContext, render_children
from .status import Event, Observation, node_rank, observe, set_condition, status_changed

log = logging.getLogger(__name__)

EventSink = Callable[[dict, Event], None]


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Reconciler:
    kube: Kube
    ctx: RenderContext
    emit: EventSink
    generate_ssh_keys: Callable[[], dict[str, str]]
    scraper: ProgressScraper | None = None

    def reconcile(self, body: dict[str, Any]) -> Observation | None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        previous = body.get("status") or {}
        try:
            job = parse_job({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
        except SpecError as exc:
            return self._reject(body, previous, exc)

        pods = self._owned_pods(job)
        if previous.get("phase") not in ("Succeeded", "Failed", "Running") and len(pods) < job.spec.nodes:
            self._create_children(job, body, {p["metadata"]["name"] for p in pods})
            pods = self._owned_pods(job)

        running = previous.get("phase") in ("Created", "Running")
        reported = self.scraper.latest((namespace, name)) if self.scraper and running else None
        observation = observe(job, meta.get("generation"), pods, previous, utcnow(), reported)
        self._follow_progress(job, pods, observation)
        if status_changed(previous, observation.status):
            self.kube.patch_job_status(namespace, name, observation.status)
        for event in observation.events:
            self.emit(body, event)
        if observation.finished:
            self._clean_up_pods(job, pods)
        return observation

    def _owned_pods(self, job) -> list[dict]:
        """The job's pods: labelled for it *and* owned by this incarnation (not a deleted namesake's)."""
        uid = job.metadata.uid
        return [p for p in self.kube.list_job_pods(job.metadata.namespace, job.metadata.name)
                if any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences", []))]

    def _create_children(self, job, body, existing_pods: set[str]) -> None:
        # Fresh keys each time are cheap; only the first Secret created is kept (create-if-absent).
        ssh_keys = self.generate_ssh_keys() if job.spec.launcher.mode == "ssh" else None
        created = []
        for child in render_children(job, self.ctx, ssh_keys=ssh_keys):
            if child["kind"] == "Pod" and child["metadata"]["name"] in existing_pods:
                continue
            if self.kube.create_if_absent(child):
                created.append(f"{child['kind']} {child['metadata']['name']}")
        if created:
            log.info("created %s", ", ".join(created), extra={"job": job.metadata.name})
            self.emit(body, Event("Normal", "Created", "created " + ", ".join(created)))

    def _follow_progress(self, job, pods: list[dict], observation: Observation) -> None:
        """While the job runs, read rank 0's metrics (worker 0 hosts global rank 0)."""
        if self.scraper is None:
            return
        key = (job.metadata.namespace, job.metadata.name)
        rank0_ip = next((p.get("status", {}).get("podIP") for p in pods if node_rank(p) == 0), None)
        if observation.status.get("phase") == "Running" and rank0_ip:
            host = f"[{rank0_ip}]" if ":" in rank0_ip else rank0_ip
            self.scraper.watch(key, f"http://{host}:{job.spec.monitoring.port}/metrics")
        else:
            self.scraper.forget(key)

    def _clean_up_pods(self, job, pods: list[dict]) -> None:
        policy = job.spec.run_policy.clean_pod_policy
        for pod in pods:
            phase = (pod.get("status") or {}).get("phase")
            if pod["metadata"].get("deletionTimestamp") or phase in ("Succeeded", "Failed") and policy != "All":
                continue
            # ssh workers 1..N-1 only serve sshd and never exit by themselves: always stop them.
            sshd_only = job.spec.launcher.mode == "ssh" and node_rank(pod) > 0
            if policy != "None" or sshd_only:
                log.info("deleting pod %s (cleanPodPolicy %s)", pod["metadata"]["name"], policy)
                self.kube.delete_pod(job.metadata.namespace, pod["metadata"]["name"])

    def _reject(self, body: dict, previous: dict, exc: SpecError) -> Observation:
        """A spec the API server accepted but we cannot run (e.g. an older CRD is installed)."""
        meta = body["metadata"]
        conditions = [dict(c) for c in previous.get("conditions") or []]
        message = "; ".join(exc.problems)[:1024]
        set_condition(conditions, "Failed", "True", "InvalidSpec", message, utcnow(), meta.get("generation"))
        status = {"phase": "Failed", "conditions": conditions, "observedGeneration": meta.get("generation")}
        observation = Observation(status=status, events=[Event("Warning", "InvalidSpec", message)])
        if status_changed(previous, status):
            self.kube.patch_job_status(meta["namespace"], meta["name"], status)
            self.emit(body, observation.events[0])
        return observation


__all__ = ["Reconciler", "utcnow"]
