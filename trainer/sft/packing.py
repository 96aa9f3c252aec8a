"""Examples into fixed-length rows, and what the model needs to keep a row's examples apart.

A row is seq_len + 1 tokens (inputs and the targets shifted by one) in three lines: token ids, whether each token
is a target, and its segment (1, 2, ... per example, 0 for the padding at the end).
  packing off   one example per row, then padding
  packing on    best-fit decreasing: the longest examples first, each into the fullest row it still fits
An example longer than a row is cut to seq_len + 1 tokens (its tail is not trained on).

From the segments: position ids restart at 0 for every example, and the attention mask is block-diagonal causal
(a token sees the earlier tokens of its own example only; padding sees padding). A target is never predicted
across a boundary: position j trains on token j + 1 only if both are in the same example.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np
import torch

IGNORE = -100  # cross_entropy's ignore_index: no loss at this position


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: rows of example indices, each row's lengths summing to at most capacity (every length ≤ capacity)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k == len(free):
            rows.append([i])
            room, row = capacity - lengths[i], len(rows) - 1
        else:
            room, row = free.pop(k)
            rows[row].append(i)
            room -= lengths[i]
        if room > 0:
            bisect.insort(free, (room, row))
    return rows


def layout(examples: Sequence[tuple[np.ndarray, np.ndarray]], width: int, pad_id: int) -> np.ndarray:
    """(3, width) int64: ids, is-target, segment of the examples (ids, targets) placed one after another, then padding."""
    row = np.zeros((3, width), dtype=np.int64)
    row[0] = pad_id
    at = 0
    for segment, (ids, targets) in enumerate(examples, 1):
        n = min(len(ids), width - at)
        row[0, at:at + n], row[1, at:at + n], row[2, at:at + n] = ids[:n], targets[:n], segment
        at += n
    return row


def shifted_targets(rows: np.ndarray) -> np.ndarray:
    """(..., width - 1): the token each input position trains on, IGNORE where none (not a target, padding, a boundary)."""
    ids, is_target, segment = rows[..., 0, :], rows[..., 1, :], rows[..., 2, :]
    keep = (is_target[..., 1:] != 0) & (segment[..., 1:] == segment[..., :-1]) & (segment[..., 1:] != 0)
    return np.where(keep, ids[..., 1:], IGNORE)


def position_ids(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids -> positions counted from each segment's first token."""
    T = segments.size(-1)
    index = torch.arange(T, device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - first


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool for scaled_dot_product_attention: True where query i may attend key j (same segment, j ≤ i)."""
    T = segments.size(-1)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]
