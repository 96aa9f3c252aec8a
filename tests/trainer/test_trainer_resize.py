"""Resume on another data-parallel world size: ZeRO shards of N ranks continued on M through DeepSpeed's universal checkpoint.

Tolerance: the continued run sums the same global batch of 8 sequences in another grouping (4 micro-batches on
1 rank instead of 2 × 2 on 2 ranks, or the other way round), and each ZeRO stage reduces gradients in its own
order, so losses match the uninterrupted 2-rank ZeRO-1 run to float32 rounding only: measured ≤ 2e-7 relative
for ZeRO 1 and 2; allowed 1e-5. A sample seen twice or skipped, or a lost optimizer state, moves a loss by > 1e-3.

ZeRO 3 (DeepSpeed 0.19.8): the first resumed step's loss is exact (weights and data position are right), but the
following ones drift from the uninterrupted run (2.3e-6 at step 15, 1.5e-3 relative by step 30, also with
weight decay 0). The universal files themselves equal the ZeRO-3 shards exactly (checked parameter by parameter);
the drift comes from DeepSpeed's ZeRO-3 universal *load* of the optimizer state (stage3.py
load_hp_checkpoint_state_from_checkpoint_dir_stage3; its param-group bug is worked around in universal.py). So for
ZeRO 3 the test holds the first step to 1e-5 and the rest to ZERO3_DRIFT, and test_zero3_resize_is_exact records
the gap as a strict xfail.
"""

from __future__ import annotations

import json

import pytest

from llm_trainer.universal import DONE, UNIVERSAL, saved_data_parallel_size

from trainer_testlib import run_ranks, write_job

pytestmark = pytest.mark.trainer

RESIZE_REL = 1e-5
ZERO3_DRIFT = 5e-3


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
    # the first resumed step depends only on the weights and the data position: the same samples, none twice or skipped
    assert second.losses[14] == pytest.approx(expected[14], rel=RESIZE_REL)
    rel = RESIZE_REL if stage < 3 else ZERO3_DRIFT
    for step, loss in second.losses.items():
        assert loss == pytest.approx(expected[step], rel=rel), f"step {step}: {loss} vs uninterrupted {expected[step]}"


@pytest.mark.xfail(strict=True, reason="DeepSpeed 0.19.8's ZeRO-3 universal load drifts after the first step (see module doc)")
def test_zero3_resize_is_exact(tmp_path, reference_run):
    _, _, second = resize(tmp_path, 3, 2, 1)
    for step, loss in second.losses.items():
        assert loss == pytest.approx(reference_run.losses[step], rel=RESIZE_REL), step
