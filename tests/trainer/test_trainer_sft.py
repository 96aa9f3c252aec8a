"""Chat SFT on CPU ranks (DeepSpeed, gloo): a tiny Llama, the shipped ChatML tokenizer, packing, evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_operator.api import load_job_file
from llm_trainer import markers
from llm_trainer.data import Sampler
from llm_trainer.model import ModelConfig, build_model
from llm_trainer.sft.dataset import cache_path, load_source
from llm_trainer.sft.loader import to_micro_batch
from llm_trainer.sft.tokenizer import load_tokenizer

from trainer_testlib import run_ranks, write_job

pytestmark = pytest.mark.trainer

DATA = Path(__file__).resolve().parent / "data"
SFT = {"spec": {"model": {"preset": "tiny-llama", "vocabSize": 320, "seqLen": 128},
                "data": {"format": "chat", "paths": [str(DATA / "chat-train.jsonl")], "tokenizer": str(DATA / "chatml"), "packing": True,
                         "validation": {"paths": [str(DATA / "chat-eval.jsonl")]}},
                "training": {"steps": 20, "evalIntervalSteps": 10, "evalSteps": 2}, "checkpoint": {"intervalSteps": 0}}}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    job = write_job(d, SFT)
    run = run_ranks(job, d / "out")
    assert run.codes == [0, 0], run.log_tail()
    return job, run


def test_chat_sft_with_packing_trains_on_two_ranks(sft_run):
    _, run = sft_run
    losses = run.losses
    assert sorted(losses) == list(range(1, 21)) and all(math.isfinite(v) for v in losses.values())
    assert losses[1] > 5.0  # ≈ ln(320) at initialization
    assert max(losses[i] for i in range(16, 21)) < losses[1] - 1.5, losses
    evals = run.summary["eval_losses"]
    assert [e["step"] for e in evals] == [10, 20] and evals[1]["loss"] < evals[0]["loss"] < losses[1]
    assert markers.read(run.out / "markers", markers.COMPLETE) == {"step": 20, "tag": "global_step20"}
    assert (run.out / "model" / "model.safetensors").is_file()


def test_the_export_carries_the_chat_template_and_stops_at_the_end_of_turn(sft_run):
    from transformers import AutoConfig, AutoTokenizer

    _, run = sft_run
    tokenizer = AutoTokenizer.from_pretrained(str(run.out / "model"))
    messages = [{"role": "user", "content": "Spell two."}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == AutoTokenizer.from_pretrained(str(DATA / "chatml")).apply_chat_template(
        messages, tokenize=False)
    assert AutoConfig.from_pretrained(str(run.out / "model")).eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_first_loss_is_the_token_mean_of_the_whole_global_batch(sft_run):
    """Step 1 on 2 ranks × 2 accumulation steps logs what one process computes on the 8 packed rows at once: the mean
    over all their target tokens (cross_entropy over one batch), from the same initial weights."""
    job, run = sft_run
    spec = load_job_file(str(job)).spec
    cfg = ModelConfig.from_resolved(spec.model_spec.resolved())
    tok = load_tokenizer(spec.data.tokenizer)
    cache = cache_path(spec.data.paths, "chat", spec.data.tokenizer, "assistant", run.out / "data-cache")
    source = load_source(cache, cfg.seq_len, packing=True, pad_id=tok.pad_id)
    sampler = Sampler(source.num_samples, spec.training.seed, rank=0, world_size=1, micro_batch=1)
    rows = torch.from_numpy(np.stack([source.sample(sampler.permute(g)) for g in range(spec.training.global_batch_size)]))
    model = build_model(cfg, seed=spec.training.seed)
    with torch.no_grad():
        batch = to_micro_batch(rows, packing=True)
        expected = model(batch.inputs, batch.targets, **batch.model_kwargs()).item()
        # what a mean of the 4 micro-batches' (2 rows each) means would have logged
        micro = [to_micro_batch(rows[i:i + 2], packing=True) for i in range(0, 8, 2)]
        mean_of_means = float(np.mean([model(m.inputs, m.targets, **m.model_kwargs()).item() for m in micro]))
    assert run.losses[1] == pytest.approx(expected, rel=1e-6)
    assert run.losses[1] != pytest.approx(mean_of_means, rel=1e-5)


def test_stopped_and_resumed_sft_run_sees_the_same_rows(sft_run, tmp_path):
    """The sampler's state resumes SFT rows as it does token windows: the losses are those of the uninterrupted run."""
    job, reference = sft_run
    first = run_ranks(job, tmp_path / "out", args=("--stop-at-step", "7"))
    assert first.codes == [0, 0], first.log_tail()
    second = run_ranks(job, tmp_path / "out")
    assert second.codes == [0, 0], second.log_tail()
    assert second.summary["resumed_from"] == "global_step7"
    assert {**first.losses, **second.losses} == reference.losses


def test_packing_and_loss_on_are_in_the_resume_key_of_sft_runs_only(tmp_path):
    from llm_trainer.rundir import resume_key

    sft = load_job_file(str(write_job(tmp_path, SFT))).spec
    key = resume_key(sft, 2)
    assert key["data.packing"] is True and key["training.lossOn"] == "assistant"
    unpacked = sft.model_copy(update={"data": sft.data.model_copy(update={"packing": False})})
    assert resume_key(unpacked, 2) != key  # other rows: a checkpoint's sample position means other data
    plain = load_job_file(str(write_job(tmp_path, name="plain.yaml"))).spec
    assert not {"data.packing", "training.lossOn"} & set(resume_key(plain, 2))  # earlier runs' keys are unchanged
