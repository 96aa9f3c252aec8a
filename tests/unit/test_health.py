"""kstatus conditions from the phase (health.py): what Flux, kapply and `kubectl wait` read."""

import pytest

from llm_operator.health import Health, health_of, set_health_conditions

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def cond(type_, status, reason, message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message}


@pytest.mark.parametrize("phase, conditions, expected", [
    ("Pending", [], Health(ready=("False", "Pending"), reconciling="Pending", stalled=None)),
    ("Pending", [cond("Queued", "True", "WaitingForAdmission")], Health(ready=("False", "Queued"), reconciling="Queued", stalled=None)),
    ("Created", [], Health(ready=("False", "Created"), reconciling="Created", stalled=None)),
    ("Restarting", [], Health(ready=("False", "Restarting"), reconciling="Restarting", stalled=None)),
    ("Running", [], Health(ready=("True", "Running"), reconciling=None, stalled=None)),
    ("Succeeded", [], Health(ready=("True", "Succeeded"), reconciling=None, stalled=None)),
    ("Suspended", [], Health(ready=("True", "Suspended"), reconciling=None, stalled=None)),
    ("Failed", [cond("Failed", "True", "BackoffLimitExceeded")], Health(ready=("False", "Failed"), reconciling=None, stalled="BackoffLimitExceeded")),
])
def test_health_of_each_phase(phase, conditions, expected):
    assert health_of(phase, conditions) == expected


def test_unknown_phase_is_refused_by_name():
    with pytest.raises(ValueError, match="status.phase"):
        health_of("Exploded", [])


def by_type(conditions):
    return {c["type"]: (c["status"], c["reason"]) for c in conditions}


def test_failed_job_is_stalled_with_the_failure_message_and_reconciling_goes_false():
    conditions = [cond("Failed", "True", "DeadlineExceeded", "activeDeadlineSeconds (60) passed")]
    set_health_conditions(conditions, "Pending", NOW, 1)
    set_health_conditions(conditions, "Failed", LATER, 2)
    found = by_type(conditions)
    assert found["Stalled"] == ("True", "DeadlineExceeded") and found["Ready"] == ("False", "Failed")
    assert found["Reconciling"] == ("False", "Failed")
    stalled = next(c for c in conditions if c["type"] == "Stalled")
    assert stalled["message"] == "activeDeadlineSeconds (60) passed" and stalled["observedGeneration"] == 2


def test_running_job_never_gets_a_stalled_condition():
    conditions = [cond("Running", "True", "AllWorkersRunning", "all 2 workers running")]
    set_health_conditions(conditions, "Running", NOW, 1)
    assert "Stalled" not in by_type(conditions) and "Reconciling" not in by_type(conditions)
    ready = next(c for c in conditions if c["type"] == "Ready")
    assert ready["message"] == "all 2 workers running"


def test_unchanged_phase_keeps_the_transition_time():
    conditions: list = []
    set_health_conditions(conditions, "Running", NOW, 1)
    set_health_conditions(conditions, "Running", LATER, 1)
    assert next(c for c in conditions if c["type"] == "Ready")["lastTransitionTime"] == NOW
