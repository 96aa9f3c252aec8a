"""The operator's metrics: transition counters and per-job goodput gauges, read back with Prometheus' parser."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llm_operator import metrics


def samples() -> dict[tuple[str, frozenset], float]:
    text = generate_latest(REGISTRY).decode()
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def job_labels(name: str) -> frozenset:
    return frozenset({"llmtraining_namespace": "ns", "llmtraining_job": name}.items())


def value(name: str, **labels) -> float:
    return samples().get((name, frozenset(labels.items())), 0.0)


def test_every_phase_is_present_before_any_job():
    phases = {dict(labels)["phase"] for name, labels in samples() if name == "llm_operator_jobs"}
    assert set(metrics.PHASES) <= phases


def test_transitions_are_counted_once_and_goodput_is_exported():
    created, restarts, failed = value("llm_operator_jobs_created_total"), value("llm_operator_restarts_total", reason="OOMKilled"), \
        value("llm_operator_jobs_failed_total", reason="BackoffLimitExceeded")
    pending = {"phase": "Pending"}
    running = {"phase": "Running", "startTime": "2026-11-27T10:00:00Z", "firstStepTime": "2026-11-27T10:01:40Z", "restarts": 0}
    restarting = {**running, "phase": "Restarting", "restarts": 1, "failure": {"reason": "OOMKilled"}, "lostSeconds": 30.0}
    failed_status = {**restarting, "phase": "Failed", "completionTime": "2026-11-27T10:11:40Z",
                     "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    for previous, status in ((None, pending), (pending, running), (running, running), (running, restarting), (restarting, failed_status),
                             (failed_status, failed_status)):
        metrics.record("ns", "goodput", "2026-11-27T10:00:00Z", previous or {}, status)
    assert value("llm_operator_jobs_created_total") == created + 1
    assert value("llm_operator_restarts_total", reason="OOMKilled") == restarts + 1
    assert value("llm_operator_jobs_failed_total", reason="BackoffLimitExceeded") == failed + 1
    got = samples()
    assert got[("llm_operator_job_time_to_first_step_seconds", job_labels("goodput"))] == 100
    assert got[("llm_operator_job_lost_seconds", job_labels("goodput"))] == 30
    assert got[("llm_operator_job_training_seconds", job_labels("goodput"))] == 600 - 30  # first step → end, less the lost
    assert got[("llm_operator_job_restarts", job_labels("goodput"))] == 1
    assert got[("llm_operator_job_phase", job_labels("goodput") | {("phase", "Failed")})] == 1
    metrics.forget_job("ns", "goodput")
    assert ("llm_operator_job_restarts", job_labels("goodput")) not in samples()
