"""Micro-batches of SFT rows: the data loader's thread stacks rows, the training thread turns them into model inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..data import Loader, Sampler
from .dataset import SFTSource, build_sft_source
from .packing import block_causal_mask, position_ids, shifted_targets


@dataclass
class MicroBatch:
    inputs: torch.Tensor  # (B, T) token ids
    targets: torch.Tensor  # (B, T) next token, -100 where nothing is trained
    position_ids: Optional[torch.Tensor] = None  # packing: restart at every example
    attn_mask: Optional[torch.Tensor] = None  # packing: (B, 1, T, T) block-diagonal causal

    def model_kwargs(self) -> dict:
        return {"position_ids": self.position_ids, "attn_mask": self.attn_mask}


def to_micro_batch(rows: torch.Tensor, packing: bool) -> MicroBatch:
    """(B, 3, T + 1) rows (ids, is-target, segment) -> the model's inputs; without packing, plain causal attention suffices:
    the padding is at the end, where no real token attends to it."""
    targets = torch.from_numpy(shifted_targets(rows.cpu().numpy())).to(rows.device)
    inputs, segments = rows[:, 0, :-1], rows[:, 2, :-1]
    if not packing:
        return MicroBatch(inputs, targets)
    return MicroBatch(inputs, targets, position_ids(segments), block_causal_mask(segments))


class SFTLoader(Loader):
    source: SFTSource

    def __init__(self, source: SFTSource, sampler: Sampler, device: torch.device, vocab_size: int, packing: bool):
        super().__init__(source, sampler, device, vocab_size)
        self.packing = packing

    def _batch(self, n: int) -> torch.Tensor:
        rows = np.stack([self.source.sample(i) for i in self.sampler.sample_indices(n)])
        if rows[:, 0].max() >= self.vocab_size:
            raise ValueError(f"data: token id {rows[:, 0].max()} in micro-batch {n} is beyond model.vocabSize {self.vocab_size}")
        t = torch.from_numpy(rows)
        return t.pin_memory() if self.pin else t

    def next_micro_batch(self) -> MicroBatch:
        if self._queue is None:
            self._start()
        assert self._queue is not None
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self.sampler.next_micro_batch += 1
        return to_micro_batch(item.to(self.device, non_blocking=True), self.packing)

    def global_target_count(self, accumulation: int) -> int:
        """Target tokens of the next optimizer step on every data-parallel rank: the loss's denominator.
        Pure arithmetic on the sampler (the same on every rank), no communication."""
        s = self.sampler
        per = s.world_size * s.micro_batch  # global micro-batch n holds global samples [n·per, (n+1)·per)
        first = s.next_micro_batch * per
        return sum(self.source.target_count(s.permute(g)) for g in range(first, first + accumulation * per))


def build_sft_loader(source: SFTSource, *, seed: int, rank: int, world_size: int, micro_batch: int, device: torch.device,
                     vocab_size: int, packing: bool) -> SFTLoader:
    return SFTLoader(source, Sampler(source.num_samples, seed, rank, world_size, micro_batch), device, vocab_size, packing)


def sft_sources(spec, seq_len: int, cache_dir, *, tokenize_here: bool, barrier) -> tuple[SFTSource, Optional[SFTSource]]:
    """(training, held-out or None) sources of an SFT job; held-out data are data.validation.paths (whole examples)."""
    data, loss_on = spec.data, spec.training.loss_on or "assistant"
    source = build_sft_source(data, loss_on, seq_len, cache_dir, tokenize_here=tokenize_here, barrier=barrier)
    if data.validation is None or not data.validation.paths:
        return source, None
    held = data.model_copy(update={"paths": list(data.validation.paths), "validation": None})
    return source, build_sft_source(held, loss_on, seq_len, cache_dir, tokenize_here=tokenize_here, barrier=barrier)
