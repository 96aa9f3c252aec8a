"""Data sources, per-rank sharding, the resumable sampler, tokenized text/jsonl, and the LR schedule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_operator.api.v1alpha1 import DataSpec
from llm_trainer.data import (PHRASE_LEN, PHRASES, Loader, Sampler, SyntheticSource, TokenFileSource, build_loader,
                              build_source)
from llm_trainer.engine import lr_lambda

CPU = torch.device("cpu")


def test_synthetic_is_deterministic_bounded_and_learnable():
    src = SyntheticSource(vocab_size=256, seq_len=64, seed=1)
    a, b = src.sample(12345), SyntheticSource(256, 64, seed=1).sample(12345)
    assert a.shape == (65,) and np.array_equal(a, b)
    assert not np.array_equal(a, src.sample(12346))
    assert not np.array_equal(a, SyntheticSource(256, 64, seed=2).sample(12345))
    assert 0 <= a.min() and a.max() < 256
    # every sample is made of the seed's phrases: the same PHRASES × PHRASE_LEN tokens recur
    bigrams = {tuple(s[i:i + 2]) for s in (src.sample(i) for i in range(200)) for i in range(64)}
    assert len(bigrams) <= PHRASES * PHRASE_LEN + PHRASES * PHRASES


@given(n=st.integers(1, 500), seed=st.integers(0, 2**31), epoch=st.integers(0, 3))
@settings(max_examples=60, deadline=None)
def test_each_epoch_is_a_permutation(n, seed, epoch):
    sampler = Sampler(num_samples=n, seed=seed, rank=0, world_size=1, micro_batch=1)
    assert sorted(sampler.permute(epoch * n + i) for i in range(n)) == list(range(n))


@pytest.mark.parametrize("world,micro", [(1, 4), (2, 2), (4, 1), (3, 5)])
def test_ranks_read_disjoint_shards_covering_the_global_batch(world, micro):
    n = 1000
    for mb in range(3):
        per_rank = [Sampler(n, 0, r, world, micro).sample_indices(mb) for r in range(world)]
        flat = [i for idx in per_rank for i in idx]
        assert len(set(flat)) == world * micro  # disjoint
        expected = {Sampler(n, 0, 0, 1, 1).permute(g) for g in range(mb * world * micro, (mb + 1) * world * micro)}
        assert set(flat) == expected  # together: the next global batch of the sample stream


def batches(loader: Loader, k: int) -> list[torch.Tensor]:
    return [torch.cat(next(loader), dim=1) for _ in range(k)]


def test_resumed_loader_sees_exactly_the_same_batches():
    src = SyntheticSource(256, 16, seed=3)
    straight = build_loader(src, seed=3, rank=1, world_size=2, micro_batch=4, device=CPU, vocab_size=256)
    expected = batches(straight, 10)
    first = build_loader(src, seed=3, rank=1, world_size=2, micro_batch=4, device=CPU, vocab_size=256)
    got = batches(first, 6)
    state = json.loads(json.dumps(first.state_dict()))  # survives serialization into the checkpoint
    first.close()
    resumed = build_loader(src, seed=3, rank=1, world_size=2, micro_batch=4, device=CPU, vocab_size=256)
    resumed.load_state_dict(state)
    got += batches(resumed, 4)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert state["next_micro_batch"] == 6


def test_resume_on_a_different_world_size_skips_consumed_samples():
    s = Sampler(100, 0, rank=0, world_size=4, micro_batch=2)
    s.load_state_dict({"next_micro_batch": 3, "world_size": 2, "micro_batch": 2})  # 12 samples consumed
    assert s.next_micro_batch == 2  # 2 × 4 × 2 = 16 ≥ 12


def test_token_files_are_windows_of_seq_len_plus_one(tmp_path):
    a = np.arange(0, 100, dtype=np.uint16)
    b = np.arange(1000, 1050, dtype=np.uint16)
    a.tofile(tmp_path / "a.bin")
    b.tofile(tmp_path / "b.bin")
    src = TokenFileSource([str(tmp_path / "a.bin"), str(tmp_path / "b.bin")], "uint16", seq_len=10)
    assert src.num_samples == 9 + 4
    assert list(src.sample(0)) == list(range(0, 11))
    assert list(src.sample(8)) == list(range(80, 91))
    assert list(src.sample(9)) == list(range(1000, 1011))
    loader = build_loader(src, seed=0, rank=0, world_size=1, micro_batch=2, device=CPU, vocab_size=2000)
    x, y = next(loader)
    assert x.dtype == torch.int64 and x.shape == (2, 10) and torch.equal(x[:, 1:], y[:, :-1])


def test_out_of_vocabulary_tokens_fail_loudly(tmp_path):
    np.full(100, 300, dtype=np.uint16).tofile(tmp_path / "t.bin")
    loader = build_loader(TokenFileSource([str(tmp_path / "t.bin")], "uint16", 8), seed=0, rank=0,
                          world_size=1, micro_batch=1, device=CPU, vocab_size=256)
    with pytest.raises(ValueError, match="beyond model.vocabSize 256"):
        next(loader)


def tiny_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the cat sat on the mat", "a dog ran"],
                            trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|endoftext|>"]))
    tok.save(str(path))
    return tok


@pytest.mark.parametrize("fmt", ["jsonl", "text"])
def test_text_and_jsonl_are_tokenized_once_into_a_token_file(tmp_path, fmt, monkeypatch):
    tok = tiny_tokenizer(tmp_path / "tokenizer.json")
    docs = ["the cat sat on the mat " * 3, "a dog ran " * 4]
    for i, doc in enumerate(docs):
        body = json.dumps({"body": doc}) + "\n" if fmt == "jsonl" else doc
        (tmp_path / f"doc{i}.{fmt}").write_text(body)
    monkeypatch.chdir(tmp_path)  # relative paths (no data.volume) are taken from the working directory
    spec = DataSpec.model_validate({"format": fmt, "paths": [f"doc*.{fmt}"], "tokenizer": "tokenizer.json",
                                    "textField": "body"})
    src = build_source(spec, vocab_size=64, seq_len=4, seed=0, cache_dir=tmp_path / "cache")
    eos = tok.token_to_id("<|endoftext|>")
    expected = tok.encode(docs[0]).ids + [eos] + tok.encode(docs[1]).ids
    stream = np.memmap(src.files[0].filename, dtype=np.uint16, mode="r")
    assert list(stream) == expected
    assert src.num_samples == (len(expected) - 1) // 4
    assert len(list((tmp_path / "cache").iterdir())) == 1
    build_source(spec, vocab_size=64, seq_len=4, seed=0, cache_dir=tmp_path / "cache")  # cached: no new file
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_missing_data_files_are_reported(tmp_path):
    spec = DataSpec.model_validate({"format": "tokens", "paths": [str(tmp_path / "nope-*.bin")]})
    with pytest.raises(FileNotFoundError, match="nope"):
        build_source(spec, vocab_size=256, seq_len=8, seed=0, cache_dir=tmp_path)


# ------------------------------------------------------------------------------------- schedule
def test_warmup_then_cosine_to_the_floor():
    f = lr_lambda(steps=100, warmup_steps=10, schedule="cosine", min_ratio=0.1)
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(10) == pytest.approx(1.0)
    assert f(99) == pytest.approx(0.1)
    assert f(10 + 89 // 2) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 44 / 89)))
    decay = [f(s) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_linear_and_constant_schedules():
    lin = lr_lambda(steps=11, warmup_steps=0, schedule="linear", min_ratio=0.0)
    assert [lin(s) for s in range(11)] == pytest.approx([1 - s / 10 for s in range(11)])
    const = lr_lambda(steps=50, warmup_steps=5, schedule="constant", min_ratio=0.1)
    assert const(2) == pytest.approx(0.6) and const(5) == const(49) == 1.0


def test_lambda_lr_applies_the_multiplier_per_optimizer_step():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(4, 2, "linear", 0.0))
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.25, 0.5, 0.5, 0.0])
