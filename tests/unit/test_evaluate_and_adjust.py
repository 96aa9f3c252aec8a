"""Evaluate and adjust, the pure parts: the best evaluation and the early-stopping decision as tables, the spec's rules for
training.lora / training.earlyStopping / export.mergeLora, and an early-stopped run's final state in the job status."""

from __future__ import annotations

import copy

import pytest

from llm_operator.api import SpecError, parse_job
from llm_operator.api.contract import final_state_line, parse_final_state
from llm_trainer.early_stopping import Best, best_evaluation, evaluations_without_improvement, improvements, should_stop

from test_lifecycle import conditions, pod, run, running_status


def history(*losses, every=10):
    return [{"step": every * (i + 1), "loss": loss} for i, loss in enumerate(losses)]


@pytest.mark.parametrize("losses,best", [
    ((), None),
    ((3.0,), Best(10, 3.0)),
    ((3.0, 2.0, 2.5), Best(20, 2.0)),
    ((3.0, 2.0, 2.0), Best(20, 2.0)),  # the earliest of equal losses
    ((float("nan"), 2.5, float("nan")), Best(20, 2.5)),  # a diverged evaluation is never the best
])
def test_best_evaluation(losses, best):
    assert best_evaluation(history(*losses)) == best


@pytest.mark.parametrize("losses,min_delta,improved", [
    ((3.0, 2.0, 2.5, 1.9), 0.0, [True, True, False, True]),
    ((3.0, 2.0, 2.5, 1.9), 0.2, [True, True, False, False]),  # 1.9 is not 0.2 below 2.0
    ((3.0, 2.95, 2.9, 2.85), 0.1, [True, False, False, False]),  # creeping: the reference follows the best, no credit
    ((3.0, 3.0), 0.0, [True, False]),  # equal is no improvement
    ((3.0, float("nan"), 2.0), 0.0, [True, False, True]),
])
def test_improvements(losses, min_delta, improved):
    assert improvements(history(*losses), min_delta) == improved


@pytest.mark.parametrize("losses,patience,min_delta,without,stop", [
    ((3.0,), 1, 0.0, 0, False),
    ((3.0, 3.1), 1, 0.0, 1, True),
    ((3.0, 3.1), 2, 0.0, 1, False),
    ((3.0, 3.1, 3.2), 2, 0.0, 2, True),
    ((3.0, 3.1, 2.9, 3.2), 2, 0.0, 1, False),  # the improvement at 2.9 resets the count
    ((3.0, 2.95, 2.9), 2, 0.1, 2, True),
])
def test_should_stop(losses, patience, min_delta, without, stop):
    assert evaluations_without_improvement(history(*losses), min_delta) == without
    assert should_stop(history(*losses), patience, min_delta) is stop


HF_MODEL = {"preset": None, "huggingFacePath": "/models/base"}


@pytest.mark.parametrize("changes,message", [
    ({"model": HF_MODEL, "training": {"zeroStage": 3, "lora": {}}}, "training.lora needs training.zeroStage 0, 1 or 2"),
    ({"model": HF_MODEL, "slotsPerNode": 2, "training": {"zeroStage": 1, "pipelineStages": 2, "lora": {}}},
     "training.lora cannot be combined with training.pipelineStages > 1"),
    ({"training": {"lora": {}}}, "training.lora needs model.huggingFacePath"),
    ({"export": {"mergeLora": True}}, "export.mergeLora needs training.lora"),
    ({"training": {"earlyStopping": {"patience": 2}}}, "training.earlyStopping needs training.evalIntervalSteps > 0"),
    ({"model": HF_MODEL, "training": {"lora": {"targetModules": []}}}, "targetModules"),
    ({"model": HF_MODEL, "training": {"lora": {"rank": 0}}}, "rank"),
])
def test_spec_refuses_by_name(manifest, changes, message):
    bad = copy.deepcopy(manifest)
    for key, value in changes.items():
        bad["spec"][key] = {**bad["spec"].get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(SpecError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_job(bad)


def test_spec_accepts_lora_and_early_stopping(manifest):
    manifest["spec"]["model"] = HF_MODEL
    manifest["spec"]["training"] = {"zeroStage": 2, "evalIntervalSteps": 5, "lora": {"rank": 16, "targetModules": ["q_proj"]},
                                    "earlyStopping": {"patience": 2, "minDelta": 0.01}}
    manifest["spec"]["data"] = {"format": "synthetic"}
    manifest["spec"]["export"] = {"mergeLora": True}
    spec = parse_job(manifest).spec
    assert (spec.training.lora.rank, spec.training.lora.alpha, spec.training.lora.target_modules) == (16, 16.0, ["q_proj"])
    assert (spec.training.early_stopping.patience, spec.training.early_stopping.min_delta, spec.export.merge_lora) == (2, 0.01, True)


@pytest.fixture
def job(manifest):
    return parse_job(manifest)


def test_an_early_stopped_run_succeeds_with_reason_early_stopped_and_its_best_evaluation(job):
    total = job.spec.training.steps
    final = final_state_line({"step": 6, "totalSteps": total, "loss": 2.0, "evalLoss": 2.5, "outcome": "complete",
                              "stopReason": "EarlyStopped", "bestEvalLoss": 2.123456, "bestEvalStep": 4,
                              "lastCheckpoint": {"step": 6, "tag": "global_step6"}})
    assert parse_final_state(final)["stopReason"] == "EarlyStopped"
    done = run(job, [pod(0, "Succeeded", exit_code=0, finished=20, message=f"training complete (exit 0)\n{final}"),
                     pod(1, "Succeeded", exit_code=0, finished=20)], running_status(job), now=30).status
    assert done["phase"] == "Succeeded"
    assert conditions(done)["Succeeded"] == ("True", "EarlyStopped")
    message = next(c["message"] for c in done["conditions"] if c["type"] == "Succeeded")
    assert message.startswith("training stopped early at step 6: the held-out loss stopped improving (best 2.123456 at step 4")
    progress = done["progress"]
    assert (progress["step"], progress["stepOfTotal"], progress["bestEvalLoss"], progress["bestEvalStep"]) == (6, f"6/{total}", 2.123, 4)


def test_a_run_that_trained_every_step_keeps_job_succeeded(job):
    total = job.spec.training.steps
    final = final_state_line({"step": total, "totalSteps": total, "loss": 2.0, "outcome": "complete", "bestEvalLoss": 2.5, "bestEvalStep": 8})
    done = run(job, [pod(0, "Succeeded", exit_code=0, finished=20, message=f"training complete (exit 0)\n{final}"),
                     pod(1, "Succeeded", exit_code=0, finished=20)], running_status(job), now=30).status
    assert conditions(done)["Succeeded"] == ("True", "JobSucceeded") and done["progress"]["bestEvalStep"] == 8
