"""Pipeline parallelism (DeepSpeed PipelineModule) on CPU ranks: the same training as without it.

Tolerance: a pipelined run computes the same sums in another order (the tied embedding's two gradient halves
meet in an all-reduce instead of one autograd accumulation; the gradient norm for clipping is reduced over
stages), so losses differ by float32 rounding only. Measured: ≤ 1.3e-7 relative over 30 steps; the tests
allow 1e-5 relative, far below any real difference (a wrong micro-batch count or a missing gradient moves
the loss at the first or second step by > 1e-2).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llm_trainer import markers
from llm_trainer.hf import config_from_hf, load_hf_weights, read_hf_config
from llm_trainer.model import build_model

from trainer_testlib import run_ranks, write_job

pytestmark = pytest.mark.trainer

PIPELINE_REL = 1e-5
TWO_STAGES = {"spec": {"training": {"pipelineStages": 2}}}


def assert_same_curve(run, reference, rel=PIPELINE_REL):
    assert run.codes == [0] * len(run.codes), run.log_tail()
    assert sorted(run.losses) == sorted(reference.losses)
    for step, loss in reference.losses.items():
        assert run.losses[step] == pytest.approx(loss, rel=rel), f"step {step}: {run.losses[step]} vs unpipelined {loss}"


def grad_norms(run) -> dict[int, float]:
    lines = (json.loads(line) for line in run.logs[0].read_text().splitlines() if line.startswith('{"step"'))
    return {r["step"]: r["grad_norm"] for r in lines}


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory):
    """BASE_JOB with 2 pipeline stages on 2 ranks: 4 micro-batches of 2 per step through the pipeline."""
    d = tmp_path_factory.mktemp("pipe2")
    return run_ranks(write_job(d, TWO_STAGES), d / "out")


def test_two_stages_on_two_ranks_match_the_unpipelined_run(two_stage_run, reference_run):
    assert_same_curve(two_stage_run, reference_run)
    log = two_stage_run.logs[0].read_text()
    assert '"pipeline_stages": 2, "data_parallel": 1' in log and '"accumulation": 4' in log
    assert two_stage_run.losses[30] < two_stage_run.losses[1] - 1.0  # it learns
    assert markers.read(two_stage_run.out / "markers", markers.COMPLETE) == {"step": 30, "tag": "global_step30"}
    # DeepSpeed's pipeline layout: one file per layer (layer 5 is the tied head: no file of its own)
    ckpt = two_stage_run.out / "checkpoints" / "global_step30"
    assert sorted(p.name for p in ckpt.glob("layer_*")) == [f"layer_0{i}-model_states.pt" for i in range(5)]


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_two_stages_by_two_data_parallel_on_four_ranks(zero_stage, tmp_path, reference_run):
    """Ranks 0, 1 are stage 0 and ranks 2, 3 stage 1 (DeepSpeed's topology: data parallelism innermost)."""
    job = write_job(tmp_path, {"spec": {"training": {"pipelineStages": 2, "zeroStage": zero_stage}}})
    run = run_ranks(job, tmp_path / "out", world=4)
    assert_same_curve(run, reference_run)
    log = run.logs[0].read_text()
    assert '"pipeline_stages": 2, "data_parallel": 2' in log and '"accumulation": 2' in log
    assert "ProcessCoord(pipe=0, data=1): 1, ProcessCoord(pipe=1, data=0): 2" in log
    # the clipping norm counts the tied embedding once (at ZeRO 0 DeepSpeed's own clip counted both copies)
    norms, expected = grad_norms(run), grad_norms(reference_run)
    assert norms == pytest.approx(expected, rel=PIPELINE_REL)


def test_another_data_parallel_size_with_pipelines_is_refused_by_name(tmp_path):
    job = write_job(tmp_path, {"spec": {"training": {"pipelineStages": 2, "steps": 4}}})
    first = run_ranks(job, tmp_path / "out", args=("--stop-at-step", "2"))
    assert first.codes == [0, 0], first.log_tail()
    second = run_ranks(job, tmp_path / "out", world=4)
    assert all(code != 0 for code in second.codes)
    error = markers.read(tmp_path / "out" / "markers", "error-rank0.json")
    assert error and "written by 1 data-parallel ranks, this run has 2" in error["error"]
    assert "not supported with training.pipelineStages > 1; resume on 1 × pipelineStages ranks" in error["error"]


def test_export_gathers_the_stages_into_the_usual_layout(two_stage_run, reference_run):
    """The export loads like an unpipelined one, holds exactly the checkpoint's weights, and computes what the
    unpipelined run's export computes (up to the runs' float rounding)."""
    exported = load_file(str(two_stage_run.out / "model" / "model.safetensors"))
    usual = load_file(str(reference_run.out / "model" / "model.safetensors"))
    assert exported.keys() == usual.keys()
    ckpt = two_stage_run.out / "checkpoints" / "global_step30"
    block1 = torch.load(ckpt / "layer_03-model_states.pt", weights_only=True)  # stage 1's first block = block 1
    torch.testing.assert_close(exported["transformer.h.1.mlp.c_fc.weight"], block1["mlp.c_fc.weight"].t(), rtol=0, atol=0)
    embedding = torch.load(ckpt / "layer_00-model_states.pt", weights_only=True)
    torch.testing.assert_close(exported["transformer.wte.weight"], embedding["weight"], rtol=0, atol=0)

    def logits(directory):
        cfg = config_from_hf(read_hf_config(directory), seq_len=32)
        model = build_model(cfg, seed=0)
        load_hf_weights(model, directory)
        return model(torch.arange(32).remainder(cfg.vocab_size).view(1, 32))

    torch.testing.assert_close(logits(two_stage_run.out / "model"), logits(reference_run.out / "model"), rtol=1e-4, atol=1e-4)


def test_pipeline_stop_and_resume_is_bit_exact(tmp_path, two_stage_run):
    job = write_job(tmp_path, TWO_STAGES)
    first = run_ranks(job, tmp_path / "out", args=("--stop-at-step", "13"))
    assert first.codes == [0, 0], first.log_tail()
    first_losses = first.losses  # read now: summary.json is the second run's afterwards
    assert sorted(first_losses) == list(range(1, 14))
    second = run_ranks(job, tmp_path / "out")
    assert second.codes == [0, 0], second.log_tail()
    assert second.summary["resumed_from"] == "global_step13"
    assert sorted(second.losses) == list(range(14, 31))
    for step, loss in {**first_losses, **second.losses}.items():
        assert loss == two_stage_run.losses[step], f"step {step}: {loss!r} != uninterrupted {two_stage_run.losses[step]!r}"


def test_llama_untied_with_activation_checkpointing_per_stage(tmp_path):
    """An untied head (its own LayerSpec) and each stage's blocks recomputed in backward: same curve as unpipelined."""
    llama = {"spec": {"model": {"preset": "tiny-llama", "seqLen": 32}, "training": {"steps": 8}, "checkpoint": {"intervalSteps": 0}}}
    plain = run_ranks(write_job(tmp_path, llama, name="plain.yaml"), tmp_path / "plain")
    piped = run_ranks(write_job(tmp_path, {"spec": {**llama["spec"], "training": {
        "steps": 8, "pipelineStages": 2, "activationCheckpointing": True}}}, name="piped.yaml"), tmp_path / "piped")
    assert plain.codes == [0, 0], plain.log_tail()
    assert_same_curve(piped, plain)


def test_evaluation_through_the_pipeline_is_the_final_models_held_out_loss(tmp_path, reference_run):
    """Two stages on two ranks with evaluation (DeepSpeed's eval_batch on both stages): the logged held-out loss is the
    exported model's loss on the held-out batches, recomputed outside the trainer; training is unchanged by it."""
    from llm_trainer.evaluation import HeldOutSyntheticSource, eval_batches

    job = write_job(tmp_path, {"spec": {"training": {"pipelineStages": 2, "evalIntervalSteps": 15, "evalSteps": 2}}})
    run = run_ranks(job, tmp_path / "out")
    assert_same_curve(run, reference_run)
    records = [json.loads(line) for line in run.logs[0].read_text().splitlines() if line.startswith("{")]
    evals = [r for r in records if r.get("event") == "eval"]
    assert [e["step"] for e in evals] == [15, 30] and all(e["eval_samples"] == 2 * 8 for e in evals)  # evalSteps × globalBatchSize
    model_dir = tmp_path / "out" / "model"
    cfg = config_from_hf(read_hf_config(model_dir))
    model = build_model(cfg, seed=0)
    load_hf_weights(model, model_dir)
    model.eval()
    held = HeldOutSyntheticSource(cfg.vocab_size, cfg.seq_len, 7)  # BASE_JOB's seed
    with torch.no_grad():
        # one data-parallel rank: the 2 global batches of 8 are 2 × 4 accumulation micro-batches of 2
        batches = eval_batches(held, 2, 0, 1, 2, 4, cfg.vocab_size)
        expected = sum(model(b[:, :-1], b[:, 1:]).item() for b in batches) / len(batches)
    assert evals[-1]["eval_loss"] == pytest.approx(expected, rel=PIPELINE_REL)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["eval_loss"] == evals[-1]["eval_loss"]
