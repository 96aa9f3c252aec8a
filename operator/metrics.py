"""The operator's own Prometheus metrics, served on --metrics-port.

Counters count transitions as the operator decides them (a job created, succeeded, failed, restarted);
per-job gauges (phase, restarts, goodput) are computed at scrape time from each job's last status, so
"seconds training" keeps moving between reconciles.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator, Mapping, Optional

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .clock import parse_time, seconds_between, utcnow
from .conditions import FAILED, find

PHASES = ("Pending", "Created", "Running", "Restarting", "Suspended", "Succeeded", "Failed")

RECONCILES = Counter("llm_operator_reconciles", "Reconciles of LLMTrainingJobs", ["result"])
RECONCILE_SECONDS = Histogram("llm_operator_reconcile_seconds", "Duration of one reconcile (read, decide, act)")
JOBS_CREATED = Counter("llm_operator_jobs_created", "Jobs whose first gang was created")
JOBS_SUCCEEDED = Counter("llm_operator_jobs_succeeded", "Jobs that Succeeded")
JOBS_FAILED = Counter("llm_operator_jobs_failed", "Jobs that Failed, by the Failed condition's reason", ["reason"])
RESTARTS = Counter("llm_operator_restarts", "Gang restarts, by root cause (status.failure.reason)", ["reason"])
# Zero-valued series from start-up, so that dashboards show 0 rather than "No data" before the first event.
for _cause in ("OOMKilled", "Evicted", "Preempted", "NodeLost", "PodDeleted", "NCCLError", "Stalled", "Error"):
    RESTARTS.labels(reason=_cause)
for _reason in ("BackoffLimitExceeded", "PodFailurePolicy", "DeadlineExceeded", "InvalidSpec"):
    JOBS_FAILED.labels(reason=_reason)


@dataclass(frozen=True)
class JobSnapshot:
    phase: str
    restarts: int
    created: Optional[datetime]
    first_step: Optional[datetime]
    completed: Optional[datetime]
    lost_seconds: float


class JobsCollector(Collector):
    """Per-job gauges from the last status the operator wrote for each job it knows."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], JobSnapshot] = {}
        self._lock = threading.Lock()

    def update(self, namespace: str, name: str, snapshot: Optional[JobSnapshot]) -> None:
        with self._lock:
            if snapshot is None:
                self._jobs.pop((namespace, name), None)
            else:
                self._jobs[(namespace, name)] = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            jobs = dict(self._jobs)
        now = utcnow()
        by_phase = GaugeMetricFamily("llm_operator_jobs", "LLMTrainingJobs known to this operator, by phase", labels=["phase"])
        counts = {phase: 0 for phase in PHASES}
        for snapshot in jobs.values():
            counts[snapshot.phase] = counts.get(snapshot.phase, 0) + 1
        for name, count in counts.items():
            by_phase.add_metric([name], count)
        yield by_phase

        # not namespace/job: Prometheus gives those to the scrape target (the operator's) and renames ours
        labels = ["llmtraining_namespace", "llmtraining_job"]
        phase = GaugeMetricFamily("llm_operator_job_phase", "1 for the job's current phase", labels=labels + ["phase"])
        restarts = GaugeMetricFamily("llm_operator_job_restarts", "Gang restarts of the job (status.restarts)", labels=labels)
        first_step = GaugeMetricFamily("llm_operator_job_time_to_first_step_seconds", "From the job's creation to the first training step read", labels=labels)
        lost = GaugeMetricFamily("llm_operator_job_lost_seconds", "Seconds lost to restarts and stalls (status.lostSeconds)", labels=labels)
        training = GaugeMetricFamily("llm_operator_job_training_seconds", "Seconds training: from the first step to now (or the end), less the lost seconds", labels=labels)
        for (namespace, name), snapshot in sorted(jobs.items()):
            key = [namespace, name]
            phase.add_metric(key + [snapshot.phase], 1)
            restarts.add_metric(key, snapshot.restarts)
            lost.add_metric(key, snapshot.lost_seconds)
            if snapshot.first_step is not None:
                first_step.add_metric(key, seconds_between(snapshot.created, snapshot.first_step))
                end = snapshot.completed or now
                training.add_metric(key, max(0.0, seconds_between(snapshot.first_step, end) - snapshot.lost_seconds))
        yield from (phase, restarts, first_step, lost, training)


JOBS = JobsCollector()
REGISTRY.register(JOBS)


def record(namespace: str, name: str, created: Optional[str], previous: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """Count the transitions from previous to status, and keep the job's snapshot for the gauges."""
    phase, was = status.get("phase") or "Pending", previous.get("phase")
    if status.get("startTime") and not previous.get("startTime"):
        JOBS_CREATED.inc()
    if phase == "Succeeded" and was != "Succeeded":
        JOBS_SUCCEEDED.inc()
    if phase == "Failed" and was != "Failed":
        failed = find(list(status.get("conditions") or []), FAILED) or {}
        JOBS_FAILED.labels(reason=failed.get("reason") or "Unknown").inc()
    new_restarts = int(status.get("restarts") or 0) - int(previous.get("restarts") or 0)
    if new_restarts > 0:
        RESTARTS.labels(reason=(status.get("failure") or {}).get("reason") or "Unknown").inc(new_restarts)
    JOBS.update(namespace, name, JobSnapshot(
        phase=phase, restarts=int(status.get("restarts") or 0), created=parse_time(created),
        first_step=parse_time(status.get("firstStepTime")), completed=parse_time(status.get("completionTime")),
        lost_seconds=float(status.get("lostSeconds") or 0)))


def forget_job(namespace: str, name: str) -> None:
    JOBS.update(namespace, name, None)
