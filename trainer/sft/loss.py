"""The SFT loss: the mean over every target token of the optimizer step, on all ranks and micro-batches together.

Micro-batches hold different numbers of target tokens (answers differ in length), so the mean of per-micro-batch
means weighs a token of a short answer more than one of a long answer. Like transformers' Trainer with
num_items_in_batch (and average_tokens_across_devices), each micro-batch's loss is its sum of token losses over
the step's global target count N. DeepSpeed divides the loss by the accumulation steps A in backward and averages
gradients over the W data-parallel ranks, so the loss handed to it is multiplied by A·W: the gradient is then that of
(sum over all target tokens of the step) / N.
"""

from __future__ import annotations

import torch


def step_scale(global_targets: int, accumulation: int, data_parallel: int) -> float:
    """Factor for a micro-batch's summed token loss (see the module's docstring); an empty step trains nothing."""
    return accumulation * data_parallel / max(global_targets, 1)


def micro_batch_loss(summed: torch.Tensor, global_targets: int, accumulation: int, data_parallel: int) -> torch.Tensor:
    return summed * step_scale(global_targets, accumulation, data_parallel)
