"""Evaluate and adjust: the best evaluation of a run, and when the held-out loss stopped improving.

Pure decisions on the run's evaluation history ([{"step", "loss"}, ...] in step order, as worker.py keeps it and its
checkpoints carry it), so that a resumed run decides exactly as the uninterrupted one would.

  best         the lowest held-out loss (the earliest of equal ones): its checkpoint is kept beside the newest
               checkpoint.keep ones and its weights are the exported model
  improvement  an evaluation whose loss is lower than every earlier one by more than minDelta (as transformers'
               EarlyStoppingCallback counts: the reference is the best so far, whether or not it improved by minDelta)
  stop         the last `patience` evaluations held no improvement
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from llm_operator.api.contract import EARLY_STOPPED  # noqa: F401 (the stop reason in summary.json and the final state)


@dataclass(frozen=True)
class Best:
    step: int
    loss: float


def best_evaluation(history: Sequence[Mapping[str, Any]]) -> Optional[Best]:
    """The evaluation with the lowest loss; None before the first (or when none had a finite loss)."""
    best: Optional[Best] = None
    for record in history:
        loss = record.get("loss")
        if isinstance(loss, (int, float)) and loss == loss and (best is None or loss < best.loss):  # loss == loss: not NaN
            best = Best(int(record["step"]), float(loss))
    return best


def improvements(history: Sequence[Mapping[str, Any]], min_delta: float) -> list[bool]:
    """For each evaluation: did it improve on every earlier one by more than min_delta? (The first one does.)"""
    out, best = [], None
    for record in history:
        loss = float(record["loss"])
        out.append(loss == loss and (best is None or loss < best - min_delta))
        if loss == loss and (best is None or loss < best):
            best = loss
    return out


def evaluations_without_improvement(history: Sequence[Mapping[str, Any]], min_delta: float) -> int:
    count = 0
    for improved in improvements(history, min_delta):
        count = 0 if improved else count + 1
    return count


def should_stop(history: Sequence[Mapping[str, Any]], patience: int, min_delta: float) -> bool:
    return evaluations_without_improvement(history, min_delta) >= patience
