"""Held-out evaluation: which samples are held out, the fixed batches each rank evaluates, and the evaluation pass.

Held-out samples never meet training:
  synthetic         a second sample stream of the same phrases, keyed apart from the training stream
  validation.paths  their own files (preflight refuses a file that is also in data.paths)
  fraction          the last windows of every training file are cut out of the training source (SampleRanges)

Every evaluation reads the same samples, on any number of ranks: an evaluation step is one global batch (as
Megatron-LM's --eval-iters), so one evaluation reads evalSteps × globalBatchSize held-out samples, evaluation step n
samples [n·G, (n+1)·G) in order (G = W·B·A: W data-parallel ranks, B micro batch, A accumulation steps). Its micro-step m
is samples [n·G + m·W·B, n·G + (m+1)·W·B), rank r its own B of them: evalSteps × A micro-batches per rank. A run resumed
on another number of ranks (the same global batch, other W and A) evaluates the same samples, so its losses compare
with the earlier ones (early stopping, the best evaluation). The mean over the ranks is the held-out loss (every rank
has as many micro-batches, every micro-batch the same number of tokens).

`evaluate(engine, batches)` is the seam for other engines (a pipeline engine's eval_batch): it takes the batches of
this rank and returns this rank's mean loss as a tensor; `Evaluation.run` averages it across the ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from .data import Source, SyntheticSource, TokenFileSource, build_source

HELD_OUT_STREAM = 0x4E1D  # keys the synthetic held-out stream apart from the training stream ([seed, index])


class HeldOutSyntheticSource(SyntheticSource):
    """The training source's phrases (same distribution), its own samples: rng([seed, HELD_OUT_STREAM, index])."""

    def sample(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, HELD_OUT_STREAM, index])
        tokens = self.phrases[rng.integers(0, len(self.phrases), self.n_phrases)].reshape(-1)
        start = int(rng.integers(0, self.phrases.shape[1]))
        return tokens[start:start + self.seq_len + 1]


class SampleRanges:
    """A view of `base` holding only the sample ranges [start, stop) given, renumbered from 0."""

    def __init__(self, base: Source, ranges: Sequence[tuple[int, int]]):
        self.base, self.seq_len = base, base.seq_len
        self.ranges = [(a, b) for a, b in ranges if b > a]
        self.starts = np.cumsum([0] + [b - a for a, b in self.ranges])
        self.num_samples = int(self.starts[-1])

    def base_index(self, index: int) -> int:
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.ranges[k][0] + index - int(self.starts[k])

    def sample(self, index: int) -> np.ndarray:
        return self.base.sample(self.base_index(index))


def held_out_counts(counts: Sequence[int], fraction: float) -> list[int]:
    """Windows held out of each file: ⌈fraction · windows⌉, but never a file's only window."""
    return [min(math.ceil(fraction * c), c - 1) if c > 1 else 0 for c in counts]


def split_fraction(source: TokenFileSource, fraction: float) -> tuple[SampleRanges, SampleRanges]:
    """(training, held-out) views: the last ⌈fraction · windows⌉ windows of every file are held out."""
    starts = [int(s) for s in source.starts]
    counts = [b - a for a, b in zip(starts, starts[1:])]
    held = held_out_counts(counts, fraction)
    train = SampleRanges(source, [(a, a + c - h) for a, c, h in zip(starts, counts, held)])
    held_out = SampleRanges(source, [(a + c - h, a + c) for a, c, h in zip(starts, counts, held)])
    if not held_out.num_samples:
        raise ValueError(f"data.validation.fraction {fraction}: the training files hold too few windows of seqLen + 1 tokens "
                         f"to hold any out ({sum(counts)} in all, at most one per file)")
    return train, held_out


def build_sources(data, vocab_size: int, seq_len: int, seed: int, cache_dir: Path, *, tokenize_here: bool = True,
                  barrier: Callable[[], None] = lambda: None) -> tuple[Source, Optional[Source]]:
    """(training source, held-out source or None) for a DataSpec."""
    source = build_source(data, vocab_size, seq_len, seed, cache_dir, tokenize_here=tokenize_here, barrier=barrier)
    if data.format == "synthetic":
        return source, HeldOutSyntheticSource(vocab_size, seq_len, seed)
    validation = data.validation
    if validation is None:
        return source, None
    if validation.fraction is not None:
        assert isinstance(source, TokenFileSource)  # tokens, or text/jsonl after tokenization
        return split_fraction(source, validation.fraction)
    held = data.model_copy(update={"paths": list(validation.paths), "validation": None})
    return source, build_source(held, vocab_size, seq_len, seed, cache_dir, tokenize_here=tokenize_here, barrier=barrier)


def eval_sample_indices(num_samples: Optional[int], steps: int, rank: int, world_size: int, micro_batch: int,
                        accumulation: int) -> list[list[int]]:
    """Held-out sample numbers of each of this rank's evaluation micro-batches: `steps` global batches of
    world_size × micro_batch × accumulation samples, in order (wrapping around a small held-out set)."""
    out = []
    for k in range(steps * accumulation):  # micro-step k of the evaluation: global batch k // accumulation
        first = (k * world_size + rank) * micro_batch
        out.append([i % num_samples if num_samples else i for i in range(first, first + micro_batch)])
    return out


def eval_batches(source: Source, steps: int, rank: int, world_size: int, micro_batch: int, accumulation: int,
                 vocab_size: int) -> list[torch.Tensor]:
    """This rank's evaluation micro-batches (CPU int64, inputs and targets in one tensor): the same on every call."""
    batches = []
    for indices in eval_sample_indices(source.num_samples, steps, rank, world_size, micro_batch, accumulation):
        rows = np.stack([source.sample(i) for i in indices]).astype(np.int64)
        if rows.max() >= vocab_size:
            raise ValueError(f"data.validation: token id {rows.max()} is beyond model.vocabSize {vocab_size}")
        batches.append(torch.from_numpy(rows))
    return batches


def evaluate(engine, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean loss of this rank's (inputs, targets) batches, the model in eval mode and without autograd."""
    was_training = engine.module.training
    engine.eval()
    try:
        total: Optional[torch.Tensor] = None
        count = 0
        with torch.no_grad():
            for inputs, targets in batches:
                loss = engine(inputs, targets).detach().float()
                total = loss if total is None else total + loss
                count += 1
        assert total is not None, "evaluate() needs at least one batch"
        return total / count
    finally:
        engine.train(was_training)


def perplexity(loss: float) -> Optional[float]:
    """exp(loss); None where it does not fit a float (a diverged run), as JSON cannot hold infinity."""
    try:
        value = math.exp(loss)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


@dataclass
class Evaluation:
    """The held-out batches of this rank and the averaged evaluation; `evaluate_fn` is the engine's evaluation pass."""

    batches: list[torch.Tensor]
    world_size: int
    device: torch.device
    evaluate_fn: Callable[[Any, Iterable[tuple[torch.Tensor, torch.Tensor]]], torch.Tensor] = evaluate
    data_parallel: Optional[int] = None  # ranks reading their own held-out batches (a pipeline's stages share theirs)

    @property
    def samples(self) -> int:
        return sum(len(b) for b in self.batches) * (self.data_parallel or self.world_size)

    def run(self, engine) -> float:
        """The held-out loss: every rank's mean, averaged over the ranks (a collective: every rank calls it)."""
        on_device = (b.to(self.device, non_blocking=True) for b in self.batches)
        local = self.evaluate_fn(engine, ((b[:, :-1], b[:, 1:]) for b in on_device)).to(self.device)
        torch.distributed.all_reduce(local)
        return local.item() / self.world_size
