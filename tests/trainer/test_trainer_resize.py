"""Resume on another data-parallel world size: ZeRO shards of N ranks continued on M through DeepSpeed's universal checkpoint.

Tolerance: the continued run sums the same global batch of 8 sequences in another grouping (4 micro-batches on
1 rank instead of 2 × 2 on 2 ranks, or the other way round), and each ZeRO stage reduces gradients in its own
order, so losses match the uninterrupted 2-rank ZeRO-1 run to float32 rounding only: measured ≤ 2e-7 relative
for ZeRO 1 and 2; allowed 1e-5. A sample seen twice or skipped, or a lost optimizer state, moves a loss by > 1e-3.

ZeRO 3 needs two repairs of DeepSpeed 0.19.8's universal load (universal.repair_zero3_universal_load: every param
group got group 0's weight decay, and all groups shared one Adam `step` tensor); without them the first resumed step
is exact and the losses drift from the second on (2.3e-6, then ~1.5e-3 relative by step 30).
"""

from __future__ import annotations

import json

import pytest

from llm_trainer.universal import DONE, UNIVERSAL, repair_zero3_universal_load, saved_data_parallel_size

from trainer_testlib import run_ranks, write_job

pytestmark = pytest.mark.trainer

RESIZE_REL = 1e-5


def resize(tmp_path, stage, before, after):
    job = write_job(tmp_path, {"spec": {"training": {"zeroStage": stage}, "checkpoint": {"keep": 5}}})  # global_step13 stays
    out = tmp_path / "out"
    first = run_ranks(job, out, world=before, args=("--stop-at-step", "13"))
    assert first.codes == [0] * before, first.log_tail()
    assert saved_data_parallel_size(out / "checkpoints" / "global_step13") == before
    first_losses = first.losses  # read now: summary.json is the second run's afterwards
    assert sorted(first_losses) == list(range(1, 14))
    second = run_ranks(job, out, world=after)  # died in engine.load_checkpoint with ZeRORuntimeException before
    assert second.codes == [0] * after, second.log_tail()
    return out, first_losses, second


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_continues_the_run(stage, before, after, tmp_path, reference_run):
    out, first_losses, second = resize(tmp_path, stage, before, after)
    tag_dir = out / "checkpoints" / "global_step13"
    assert (tag_dir / UNIVERSAL / DONE).is_file()  # converted once, kept beside the original
    assert not list(tag_dir.glob(f"{UNIVERSAL}.tmp-*"))
    assert second.summary["resumed_from"] == "global_step13"
    assert f"written by {before} data-parallel ranks, this run has {after}" in second.summary["resized"]
    events = [json.loads(line) for line in second.logs[0].read_text().splitlines() if line.startswith('{"event": "resume-resized"')]
    assert len(events) == 2 and "universal" in events[-1]["message"]  # converting…, then resuming from the copy
    final = json.loads((out / "markers" / "final.json").read_text())
    assert final["resized"] == second.summary["resized"]  # reaches the pod's termination message

    assert sorted(second.losses) == list(range(14, 31))
    expected = reference_run.losses
    for step, loss in first_losses.items():
        assert loss == pytest.approx(expected[step], rel=RESIZE_REL), step
    for step, loss in second.losses.items():  # the same samples (none twice or skipped) and the same optimizer state
        assert loss == pytest.approx(expected[step], rel=RESIZE_REL), f"step {step}: {loss} vs uninterrupted {expected[step]}"


def test_zero3_repair_gives_each_group_its_own_decay_and_step_counter():
    """What DeepSpeed 0.19.8's ZeRO-3 universal load leaves behind, and the repair (no ranks needed)."""
    import torch

    matrices, norms = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([{"params": [matrices], "weight_decay": 0.1}, {"params": [norms], "weight_decay": 0.0}], lr=0.1)
    hyper = [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")} for g in optimizer.param_groups]
    shared = torch.tensor(13.0)
    for p in (matrices, norms):
        optimizer.state[p] = {"step": shared, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    for group in optimizer.param_groups:
        group["weight_decay"] = 0.1  # group 0's, everywhere
    repair_zero3_universal_load(optimizer, hyper)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    matrices.grad, norms.grad = torch.ones(2, 2), torch.ones(2)
    optimizer.step()
    assert [optimizer.state[p]["step"].item() for p in (matrices, norms)] == [14.0, 14.0]  # shared: 14 and 15


def test_a_failed_conversion_fails_every_rank_with_its_message(tmp_path):
    """Rank 0 converts while the others wait for its outcome: if it fails, none of them waits for the timeout."""
    job = write_job(tmp_path, {"spec": {"training": {"steps": 4}}})
    out = tmp_path / "out"
    first = run_ranks(job, out, world=1, args=("--stop-at-step", "2"))
    assert first.codes == [0], first.log_tail()
    (out / "checkpoints" / "global_step2" / "mp_rank_00_model_states.pt").unlink()  # ds_to_universal cannot work without it
    second = run_ranks(job, out, world=2, timeout=120)
    assert all(code != 0 for code in second.codes), second.log_tail()
    for rank in (0, 1):
        error = json.loads((out / "markers" / f"error-rank{rank}.json").read_text())["error"]
        assert "to a universal checkpoint failed" in error, error
    assert not (out / "checkpoints" / "global_step2" / UNIVERSAL).exists()
    assert not list((out / "checkpoints" / "global_step2").glob(f"{UNIVERSAL}.tmp-*"))
