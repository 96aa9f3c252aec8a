"""Packing and padding of SFT examples, and the loss as a mean over every target token of a step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_trainer.model import ModelConfig, build_model
from llm_trainer.sft.loader import to_micro_batch
from llm_trainer.sft.loss import micro_batch_loss
from llm_trainer.sft.packing import IGNORE, block_causal_mask, layout, pack, position_ids, shifted_targets


@given(lengths=st.lists(st.integers(1, 33), min_size=1, max_size=60), capacity=st.integers(33, 80))
@settings(max_examples=80, deadline=None)
def test_pack_places_every_example_once_within_capacity(lengths, capacity):
    rows = pack(lengths, capacity)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= capacity for row in rows)


def test_pack_is_best_fit_decreasing():
    # 5 opens a row (room 3), 4 does not fit there (a row with room 4), 3 fits both: the fuller first, then 3 and 1 the other
    assert pack([5, 4, 3, 3, 1], 8) == [[0, 2], [1, 3, 4]]


def example(ids, targets):
    return np.asarray(ids, dtype=np.int64), np.asarray(targets, dtype=bool)


def test_targets_never_cross_an_example_nor_come_from_padding():
    row = layout([example([5, 6, 7], [0, 1, 1]), example([8, 9], [1, 1])], width=7, pad_id=0)
    assert row.tolist() == [[5, 6, 7, 8, 9, 0, 0], [0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 2, 2, 0, 0]]
    # position j trains on token j + 1: 6 and 7 from the first example; 8 is the second's first token (nothing predicts
    # it), 9 follows it; padding is never a target
    assert shifted_targets(row).tolist() == [6, 7, IGNORE, 9, IGNORE, IGNORE]


def test_position_ids_restart_and_attention_stays_inside_each_example():
    segments = torch.tensor([[1, 1, 1, 2, 2, 0, 0]])
    assert position_ids(segments).tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    mask = block_causal_mask(segments)[0, 0].int()
    expected = torch.zeros(7, 7, dtype=torch.int)
    for a, b in ((0, 3), (3, 5), (5, 7)):
        expected[a:b, a:b] = torch.ones(b - a, b - a, dtype=torch.int).tril()
    assert torch.equal(mask, expected)


TINY = dict(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, ffn_hidden=64, seq_len=24, vocab_size=50, tie_embeddings=False)


@pytest.mark.parametrize("architecture,window", [("llama", None), ("gpt", None), ("llama", 4)])
def test_a_packed_row_computes_what_each_example_computes_alone(architecture, window):
    """No attention across examples and positions from 0 for each: the logits of a packed row are the examples' own
    (with a sliding window too, Mistral's: the packed mask is cut to the band)."""
    model = build_model(ModelConfig(architecture=architecture, sliding_window=window, **TINY), seed=3).eval()
    rng = np.random.default_rng(0)
    examples = [example(rng.integers(0, 50, n), np.ones(n)) for n in (9, 6, 7)]
    rows = torch.from_numpy(layout(examples, width=TINY["seq_len"] + 1, pad_id=0))[None]
    batch = to_micro_batch(rows, packing=True)
    with torch.no_grad():
        packed = model(batch.inputs, **batch.model_kwargs())[0]
        at = 0
        for ids, _ in examples:
            alone = model(torch.from_numpy(ids)[None])[0]
            torch.testing.assert_close(packed[at:at + len(ids)], alone, rtol=1e-5, atol=1e-5)
            at += len(ids)
        # without the mask and positions the same row mixes the examples: the test can tell
        mixed = model(batch.inputs)[0]
        assert not torch.allclose(mixed[9:15], packed[9:15], atol=1e-3)


def test_padding_changes_no_logit_of_the_example():
    model = build_model(ModelConfig(architecture="llama", **TINY), seed=3).eval()
    ids = np.arange(1, 11)
    rows = torch.from_numpy(layout([example(ids, np.ones(10))], width=TINY["seq_len"] + 1, pad_id=0))[None]
    batch = to_micro_batch(rows, packing=False)
    assert batch.attn_mask is None and (batch.targets[0, 9:] == IGNORE).all()
    with torch.no_grad():
        torch.testing.assert_close(model(batch.inputs)[0, :10], model(torch.from_numpy(ids)[None])[0], rtol=1e-5, atol=1e-5)


def test_step_loss_is_the_token_mean_not_the_mean_of_micro_batch_means():
    """2 ranks × 2 accumulation steps of unequal answers. DeepSpeed's arithmetic (loss / accumulation in backward, gradients
    averaged over ranks) applied to micro_batch_loss gives the gradient of one batch of everything, mean over its tokens;
    the mean of the micro-batches' means gives another."""
    cfg = ModelConfig(architecture="llama", **TINY)
    rng = np.random.default_rng(1)
    lengths = [(20, 3), (12, 11), (18, 1), (9, 8)]  # (tokens, answer tokens): short and long answers
    rows = []
    for n, answer in lengths:
        targets = np.zeros(n)
        targets[n - answer:] = 1
        rows.append(layout([example(rng.integers(0, 50, n), targets)], width=cfg.seq_len + 1, pad_id=0))
    batches = [to_micro_batch(torch.from_numpy(r)[None], packing=False) for r in rows]
    micro = {(rank, step): batches[2 * rank + step] for rank in range(2) for step in range(2)}
    total = sum(int((b.targets != IGNORE).sum()) for b in batches)

    def gradient(loss_of) -> torch.Tensor:
        per_rank = []
        for rank in range(2):
            model = build_model(cfg, seed=5)
            for step in range(2):
                (loss_of(model, micro[rank, step]) / 2).backward()  # DeepSpeed: loss / gradient_accumulation_steps
            per_rank.append(model.lm_head.weight.grad.clone())
        return sum(per_rank) / 2  # DeepSpeed: gradients averaged over the data-parallel ranks

    ours = gradient(lambda m, b: micro_batch_loss(m(b.inputs, b.targets, reduction="sum"), total, accumulation=2, data_parallel=2))
    means = gradient(lambda m, b: m(b.inputs, b.targets))
    single = build_model(cfg, seed=5)
    everything = torch.cat([b.inputs for b in batches]), torch.cat([b.targets for b in batches])
    single(*everything).backward()  # one batch of all four, cross-entropy's mean over its target tokens
    expected = single.lm_head.weight.grad
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(means, expected, rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("packing", [False, True])
def test_source_target_counts_are_the_rows_trained_positions(packing):
    from llm_trainer.sft.dataset import SFTSource

    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 40, 30)  # some longer than a row of 25: cut
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids, targets = rng.integers(0, 50, offsets[-1]), rng.random(offsets[-1]) < 0.5
    source = SFTSource.from_arrays(ids, targets, offsets, seq_len=24, packing=packing, pad_id=0)
    assert source.truncated == int((lengths > 25).sum())
    placed = sorted(k for g in source.groups for k in g)
    assert placed == list(range(30)) and (len(source.groups) < 30) == packing
    for i in range(source.num_samples):
        row = source.sample(i)
        assert row.shape == (3, 25)
        assert source.target_count(i) == int((shifted_targets(row) != IGNORE).sum())
