"""What the operator reads from a user's program: the series progress_receiver serves satisfy parse_progress, and a
program that reports nothing is never judged stalled on a step it never saw."""

from __future__ import annotations

import pytest

from llm_operator import lifecycle
from llm_operator.api import parse_job
from llm_operator.lifecycle import stall_limit, step_of_total
from llm_operator.progress import parse_progress
from llm_trainer.progress_receiver import ProgressState, parse_report


def hf_report(percent, **metrics):
    """The payload transformers' KubeflowCallback posts (metric values are strings: str(v))."""
    return {"trainerStatus": {"progressPercentage": percent, "estimatedRemainingSeconds": 30,
                              "metrics": [{"name": k, "value": str(v)} for k, v in metrics.items()]}}


def test_a_programs_series_are_what_the_operator_reads():
    state = ProgressState()
    assert parse_progress(state.exposition()) == {}  # reports nothing: no step, no loss (the status keeps step 0)
    state.apply(parse_report(hf_report(0, total_steps=100)))  # train begin
    assert parse_progress(state.exposition()) == {"totalSteps": 100}  # no step yet: none is invented
    state.apply(parse_report(hf_report(12, loss=2.5, learning_rate=1e-4, current_step=12, total_steps=100, epoch=0.5)))
    assert parse_progress(state.exposition()) == {"step": 12, "totalSteps": 100, "loss": 2.5}
    state.apply(parse_report(hf_report(100, loss=2.0, train_runtime=1.5, train_loss="n/a")))  # train end: no step
    assert parse_progress(state.exposition()) == {"step": 12, "totalSteps": 100, "loss": 2.0}
    assert "llmtrain_finished 1.0" in state.exposition()


@pytest.mark.parametrize("stall, startup, step_seen, awaited, limit", [
    (60, 120, True, True, 60),      # stepping: the stall timeout
    (60, 120, False, True, 120),    # the built-in trainer before its first step: the startup timeout
    (60, 120, False, False, None),  # a program that has reported no step: never judged
    (60, 120, True, False, 60),     # a program after its first reported step: the stall timeout
    (None, 120, True, True, None),  # unset: off
    (60, None, False, True, None),
])
def test_stall_limit(stall, startup, step_seen, awaited, limit):
    assert stall_limit(stall, startup, step_seen=step_seen, first_step_awaited=awaited) == limit


@pytest.mark.parametrize("step, total, reported, shown", [(0, 10, True, "0/10"), (7, 10, True, "7/10"), (0, 10, False, "not reported"),
                                                       (7, None, True, "7/?")])
def test_step_of_total(step, total, reported, shown):
    assert step_of_total(step, total, reported=reported) == shown


@pytest.fixture
def make_job(manifest):
    def make(program=True, **run_policy):
        manifest["spec"]["runPolicy"] = run_policy
        if program:  # the user's own program instead of the built-in trainer's model/data/training/deepspeed
            for field in ("model", "data", "training", "deepspeed"):
                manifest["spec"].pop(field, None)
            manifest["spec"]["program"] = {"command": ["python", "train.py"], "launcher": "torchrun"}
        return parse_job(manifest)
    return make


def test_a_program_that_reports_nothing_runs_unjudged_and_says_so(make_job):
    """decide() for a program job that reports nothing: startupTimeoutSeconds never fires, the status says no progress
    is reported, success claims no step; once it reports, it is judged, over the total it reported."""
    from test_lifecycle import gang, run, running_status

    assert lifecycle.awaits_first_step(make_job(program=False))  # the built-in trainer always reports its steps
    job = make_job(startupTimeoutSeconds=120, stallTimeoutSeconds=60)
    assert not lifecycle.awaits_first_step(job)
    previous = running_status(job)
    quiet = run(job, gang(), previous, now=10_000, reported={"podUid": "pod-0-0"})  # /metrics answered, no llmtrain_*
    assert quiet.status["phase"] == "Running" and "failure" not in quiet.status
    assert quiet.status["progress"]["stepOfTotal"] == "not reported" and quiet.status["progress"]["step"] == 0
    assert "totalSteps" not in quiet.status["progress"]  # not spec.training's default: a program has no training
    done = run(job, gang("Succeeded", exit_code=0), quiet.status, now=10_010)
    assert done.status["phase"] == "Succeeded" and done.status["progress"]["stepOfTotal"] == "not reported"

    stepping = run(job, gang(), previous, now=10, reported={"step": 3, "totalSteps": 500, "podUid": "pod-0-0"})
    assert stepping.status["progress"]["stepOfTotal"] == "3/500" and stepping.status["progress"]["totalSteps"] == 500
    assert run(job, gang(), stepping.status, now=70, reported={"step": 3, "podUid": "pod-0-0"}).status["failure"]["reason"] == "Stalled"
    finished = run(job, gang("Succeeded", exit_code=0), stepping.status, now=80)
    assert finished.status["progress"]["stepOfTotal"] == "500/500"  # the total it reported, as for the built-in trainer
    no_total = run(job, gang(), previous, now=10, reported={"step": 3, "podUid": "pod-0-0"})
    assert no_total.status["progress"]["stepOfTotal"] == "3/?"
