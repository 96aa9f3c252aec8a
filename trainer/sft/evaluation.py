"""Held-out loss of SFT data: the mean over every held-out target token (all ranks' batches together).

Like the training loss (loss.py), a token of a short answer weighs what a token of a long one does: each rank sums its
token losses and counts its targets, and the sums are added across the ranks before dividing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..evaluation import eval_sample_indices
from .dataset import SFTSource
from .loader import to_micro_batch


def sft_eval_batches(source: SFTSource, steps: int, rank: int, world_size: int, micro_batch: int, accumulation: int,
                     vocab_size: int) -> list[torch.Tensor]:
    """This rank's evaluation rows (CPU, (B, 3, seqLen + 1)): its share of `steps` global batches, the same on every call."""
    batches = []
    for indices in eval_sample_indices(source.num_samples, steps, rank, world_size, micro_batch, accumulation):
        rows = np.stack([source.sample(i) for i in indices])
        if rows[:, 0].max() >= vocab_size:
            raise ValueError(f"data.validation: token id {rows[:, 0].max()} is beyond model.vocabSize {vocab_size}")
        batches.append(torch.from_numpy(rows))
    return batches


@dataclass
class SFTEvaluation:
    batches: list[torch.Tensor]
    device: torch.device
    packing: bool
    data_parallel: Optional[int] = None

    @property
    def samples(self) -> int:
        return sum(len(b) for b in self.batches) * (self.data_parallel or 1)

    def run(self, engine) -> float:
        """A collective: every rank calls it."""
        was_training = engine.module.training
        engine.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # summed token loss, target tokens
        try:
            with torch.no_grad():
                for rows in self.batches:
                    batch = to_micro_batch(rows.to(self.device), self.packing)
                    totals[0] += engine(batch.inputs, batch.targets, reduction="sum", **batch.model_kwargs()).double()
                    totals[1] += (batch.targets != -100).sum()
        finally:
            engine.train(was_training)
        torch.distributed.all_reduce(totals)
        return float(totals[0] / totals[1].clamp(min=1))
