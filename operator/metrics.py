"""The operator's own Prometheus metrics (jobs by phase, reconciles), served on --metrics-port."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("llm_operator_reconciles", "Reconciles of LLMTrainingJobs", ["result"])
RECONCILE_SECONDS = Histogram("llm_operator_reconcile_seconds", "Duration of one reconcile")
JOBS = Gauge("llm_operator_jobs", "LLMTrainingJobs known to this operator, by phase", ["phase"])

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def record_phase(namespace: str, name: str, phase: str | None) -> None:
    """phase None forgets the job (deleted)."""
    with _lock:
        if phase is None:
            _phases.pop((namespace, name), None)
        else:
            _phases[(namespace, name)] = phase
        counts: dict[str, int] = {}
        for value in _phases.values():
            counts[value] = counts.get(value, 0) + 1
        for known in ("Pending", "Created", "Running", "Succeeded", "Failed", "Suspended", "Restarting"):
            JOBS.labels(phase=known).set(counts.get(known, 0))
