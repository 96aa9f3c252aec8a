"""Held-out evaluation: the held-out samples are never trained on, and the validation loss appears at its interval in
the JSON log, /metrics, progress.json, summary.json and the final state, averaged over the data-parallel ranks."""

from __future__ import annotations

import json
import math
import signal
import time
import urllib.request

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from llm_operator.api import load_job_file
from llm_operator.api.v1alpha1 import DataSpec
from llm_trainer import markers
from llm_trainer.data import Sampler, SyntheticSource, TokenFileSource
from llm_trainer.evaluation import (HeldOutSyntheticSource, SampleRanges, build_sources, eval_batches, eval_sample_indices,
                                    split_fraction)

from trainer_testlib import free_port, run_ranks, start_ranks, write_job

pytestmark = pytest.mark.trainer

EVAL = {"spec": {"training": {"evalIntervalSteps": 10, "evalSteps": 2}}}


def token_files(d, sizes, dtype="uint16"):
    paths = []
    for i, n in enumerate(sizes):
        path = d / f"part{i}.bin"
        (np.arange(n) * 7 % 251 + i).astype(dtype).tofile(path)
        paths.append(str(path))
    return paths


def training_indices(source: SampleRanges, world_size: int = 2, micro: int = 2) -> set[int]:
    """The base-source samples every rank reads in two epochs of the training sampler."""
    seen = set()
    for rank in range(world_size):
        sampler = Sampler(source.num_samples, seed=3, rank=rank, world_size=world_size, micro_batch=micro)
        for n in range(2 * source.num_samples // (world_size * micro) + 1):
            seen.update(source.base_index(i) for i in sampler.sample_indices(n))
    return seen


def test_held_out_fraction_is_never_trained_on(tmp_path):
    paths = token_files(tmp_path, [33 * 10 + 1, 33 * 3 + 5, 40])
    source = TokenFileSource(paths, "uint16", seq_len=33)
    train, held = split_fraction(source, 0.2)
    held_indices = {held.base_index(i) for i in range(held.num_samples)}
    trained = training_indices(train)
    assert not trained & held_indices
    assert trained | held_indices == set(range(source.num_samples))  # nothing else is lost
    assert held.num_samples == 2 + 1 + 0  # ⌈0.2 · 10⌉, ⌈0.2 · 3⌉, and a file's only window stays in training
    held_rows = {source.sample(i).tobytes() for i in held_indices}
    assert not held_rows & {source.sample(i).tobytes() for i in trained}


def test_held_out_fraction_through_the_data_spec(tmp_path):
    paths = token_files(tmp_path, [17 * 20 + 1])
    data = DataSpec.model_validate({"format": "tokens", "paths": paths, "validation": {"fraction": 0.25}})
    train, held = build_sources(data, 256, 17, 0, tmp_path / "cache")
    assert held is not None and (train.num_samples, held.num_samples) == (15, 5)
    assert np.array_equal(held.sample(0), TokenFileSource(paths, "uint16", 17).sample(15))


def test_validation_paths_are_their_own_files(tmp_path):
    train_paths = token_files(tmp_path, [17 * 4 + 1])
    (tmp_path / "val").mkdir()
    val_paths = token_files(tmp_path / "val", [17 * 3 + 1])
    data = DataSpec.model_validate({"format": "tokens", "paths": train_paths, "validation": {"paths": val_paths}})
    train, held = build_sources(data, 256, 17, 0, tmp_path / "cache")
    assert held is not None and (train.num_samples, held.num_samples) == (4, 3)
    assert np.array_equal(held.sample(2), TokenFileSource(val_paths, "uint16", 17).sample(2))


def test_synthetic_held_out_samples_differ_from_the_training_stream():
    train, held = SyntheticSource(256, 32, seed=7), HeldOutSyntheticSource(256, 32, seed=7)
    trained = {train.sample(i).tobytes() for i in range(5000)}
    held_rows = [held.sample(i) for i in range(500)]
    assert not trained & {r.tobytes() for r in held_rows}
    assert set(np.concatenate(held_rows).tolist()) <= set(train.phrases.reshape(-1).tolist())  # the same distribution


def test_evaluation_batches_are_fixed_and_split_over_the_ranks():
    assert eval_sample_indices(None, 2, rank=1, world_size=2, micro_batch=3, accumulation=1) == [[3, 4, 5], [9, 10, 11]]
    assert eval_sample_indices(None, 1, rank=1, world_size=2, micro_batch=3, accumulation=2) == [[3, 4, 5], [9, 10, 11]]
    assert eval_sample_indices(5, 1, rank=1, world_size=2, micro_batch=3, accumulation=1) == [[3, 4, 0]]  # a small held-out set wraps
    source = HeldOutSyntheticSource(256, 16, seed=1)
    first = eval_batches(source, 3, 0, 2, 2, 1, 256)
    again = eval_batches(source, 3, 0, 2, 2, 1, 256)
    other_rank = eval_batches(source, 3, 1, 2, 2, 1, 256)
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and len(first) == 3 and first[0].shape == (2, 17)
    assert not any(torch.equal(a, b) for a, b in zip(first, other_rank))


@pytest.mark.parametrize("ranks", [1, 2, 4, 8])
def test_an_evaluation_reads_the_same_held_out_samples_on_any_number_of_ranks(ranks):
    """A global batch of 16 (micro batch 2, 16 / (2 × ranks) accumulation steps), 3 evaluation steps: every number
    of ranks reads samples 0..47, evaluation step n samples [16n, 16n + 16), and each rank as many micro-batches.
    (Before, an evaluation read evalSteps × micro × ranks samples: 12 on 1 rank, 96 on 8.)"""
    steps, micro, global_batch = 3, 2, 16
    accumulation = global_batch // (micro * ranks)
    per_rank = [eval_sample_indices(None, steps, rank, ranks, micro, accumulation) for rank in range(ranks)]
    assert all(len(batches) == steps * accumulation for batches in per_rank)
    for n in range(steps):
        step_samples = [i for batches in per_rank for batch in batches[n * accumulation:(n + 1) * accumulation] for i in batch]
        assert sorted(step_samples) == list(range(n * global_batch, (n + 1) * global_batch))


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """BASE_JOB on 2 ranks with evaluation every 10 steps; /metrics scraped while it lingers after the last step."""
    d = tmp_path_factory.mktemp("eval")
    job = write_job(d, EVAL)
    port = free_port()
    out = d / "out"
    procs, logs = start_ranks(job, out, env={"LLMTRAIN_METRICS_PORT": str(port), "LLMTRAIN_FINAL_SCRAPE_SECONDS": "120"})
    scraped = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and markers.read(out / "markers", markers.COMPLETE) is None:
            assert all(p.poll() is None for p in procs), "\n".join(log.read_text()[-3000:] for log in logs)
            time.sleep(0.5)
        scraped = scrape(port)
        for p in procs:
            p.send_signal(signal.SIGTERM)  # cuts the final-scrape linger short
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    records = [json.loads(line) for line in logs[0].read_text().splitlines() if line.startswith("{")]
    return {"job": job, "out": out, "codes": codes, "logs": logs, "scrape": scraped, "records": records,
            "summary": json.loads((out / "summary.json").read_text())}


def test_validation_loss_at_its_interval_in_log_metrics_and_summary(evaluated_run):
    r = evaluated_run
    assert r["codes"] == [0, 0], "\n".join(log.read_text()[-3000:] for log in r["logs"])
    evals = [rec for rec in r["records"] if rec.get("event") == "eval"]
    assert [e["step"] for e in evals] == [10, 20, 30]
    assert all(e["eval_samples"] == 2 * 8 for e in evals)  # evalSteps × globalBatchSize
    for e in evals:
        assert 0 < e["eval_loss"] < 10 and e["eval_perplexity"] == pytest.approx(math.exp(e["eval_loss"]))
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]  # the model learns what the held-out samples share
    summary = r["summary"]
    assert [e["step"] for e in summary["eval_losses"]] == [10, 20, 30]
    assert summary["eval_loss"] == evals[-1]["eval_loss"] and summary["eval_perplexity"] == evals[-1]["eval_perplexity"]
    scraped = r["scrape"]
    assert scraped["llmtrain_eval_loss"] == pytest.approx(summary["eval_loss"])
    assert scraped["llmtrain_eval_perplexity"] == pytest.approx(summary["eval_perplexity"])
    progress = json.loads((r["out"] / "progress.json").read_text())
    assert progress["evalLoss"] == summary["eval_loss"]
    assert markers.read(r["out"] / "markers", markers.FINAL)["evalLoss"] == summary["eval_loss"]  # the operator's final state
    best = min(summary["eval_losses"], key=lambda e: e["loss"])  # the best evaluation (issue 21): summary, metrics, final state
    assert (summary["best_eval_loss"], summary["best_eval_step"]) == (best["loss"], best["step"])
    assert (scraped["llmtrain_best_eval_loss"], scraped["llmtrain_best_eval_step"]) == (pytest.approx(best["loss"]), best["step"])
    final = markers.read(r["out"] / "markers", markers.FINAL)
    assert (final["bestEvalLoss"], final["bestEvalStep"], final["stopReason"]) == (best["loss"], best["step"], None)


def test_validation_loss_is_the_mean_over_the_ranks_of_the_final_model(evaluated_run):
    """Recomputed outside the trainer: the exported model on both ranks' held-out batches, averaged."""
    from llm_trainer.hf import config_from_hf, load_hf_weights, read_hf_config
    from llm_trainer.model import build_model

    model_dir = evaluated_run["out"] / "model"
    cfg = config_from_hf(read_hf_config(model_dir))
    model = build_model(cfg, seed=0)
    load_hf_weights(model, model_dir)
    model.eval()
    spec = load_job_file(str(evaluated_run["job"])).spec
    held = HeldOutSyntheticSource(cfg.vocab_size, cfg.seq_len, spec.training.seed)
    with torch.no_grad():
        # 2 evaluation steps of BASE_JOB's global batch 8: 2 × 2 accumulation micro-batches of 2 on each of the 2 ranks
        per_rank = [np.mean([model(b[:, :-1], b[:, 1:]).item() for b in eval_batches(held, 2, rank, 2, 2, 2, cfg.vocab_size)])
                    for rank in range(2)]
    assert evaluated_run["summary"]["eval_loss"] == pytest.approx(float(np.mean(per_rank)), rel=1e-5)


def test_evaluation_does_not_change_training(evaluated_run, reference_run):
    """Eval mode, no autograd, its own samples: the training losses are those of the run without evaluation."""
    losses = {rec["step"]: rec["loss"] for rec in evaluated_run["records"] if "loss" in rec}
    assert losses == pytest.approx(reference_run.losses, rel=1e-6)


def test_held_out_fraction_of_token_files_trains_and_evaluates(tmp_path):
    paths = token_files(tmp_path, [33 * 40 + 1, 33 * 30 + 1])
    job = write_job(tmp_path, {"spec": {"slotsPerNode": 1, "data": {"format": "tokens", "paths": paths, "validation": {"fraction": 0.1}},
                                        "training": {"steps": 4, "globalBatchSize": 2, "evalIntervalSteps": 2, "evalSteps": 3}}})
    run = run_ranks(job, tmp_path / "out", world=1)
    assert run.codes == [0], run.log_tail()
    assert [e["step"] for e in run.summary["eval_losses"]] == [2, 4]
    assert all(math.isfinite(e["loss"]) for e in run.summary["eval_losses"])


def test_eval_interval_needs_held_out_data():
    from llm_operator.api import SpecError, parse_job

    from trainer_testlib import BASE_JOB, deep_update

    bad = deep_update(BASE_JOB, {"spec": {"data": {"format": "tokens", "paths": ["a.bin"]}, "training": {"evalIntervalSteps": 5}}})
    with pytest.raises(SpecError, match="training.evalIntervalSteps needs data.validation"):
        parse_job(bad)
    with pytest.raises(SpecError, match="synthetic data holds out its own samples"):
        parse_job(deep_update(BASE_JOB, {"spec": {"data": {"validation": {"fraction": 0.1}}}}))
    with pytest.raises(SpecError, match="exactly one of data.validation.paths and data.validation.fraction"):
        parse_job(deep_update(BASE_JOB, {"spec": {"data": {"format": "tokens", "paths": ["a.bin"], "validation": {}}}}))


def test_evaluations_carry_through_a_resume(evaluated_run, tmp_path):
    """Stopped at step 13 and resumed: the same evaluations as the uninterrupted run (the fixed held-out batches, the
    same weights), the earlier ones kept from the checkpoint."""
    job = write_job(tmp_path, EVAL)
    first = run_ranks(job, tmp_path / "out", args=("--stop-at-step", "13"))
    assert first.codes == [0, 0], first.log_tail()
    assert [e["step"] for e in first.summary["eval_losses"]] == [10]
    resumed = run_ranks(job, tmp_path / "out")
    assert resumed.codes == [0, 0], resumed.log_tail()
    expected = {e["step"]: e["loss"] for e in evaluated_run["summary"]["eval_losses"]}
    got = {e["step"]: e["loss"] for e in resumed.summary["eval_losses"]}
    assert list(got) == [10, 20, 30] and got == pytest.approx(expected, rel=1e-6)
