"""What the operator and the in-pod trainer tell each other beyond the spec, in one place.

- RESTART_ENV: the gang's restart count, set on every worker pod (the trainer exports it as a metric).
- FINAL_SCRAPE_ENV: how long the trainer keeps /metrics up after training ended, for a last scrape.
- EXIT_BAD_INPUT: the launcher's exit code when the job's input files fail the pre-flight checks; restarting cannot
  help, so the default podFailurePolicy fails the job on it.
- The final state: the launcher ends the pod's termination message with one line
  `llmtrain-final {json}` (step, totalSteps, loss, tokensPerSecond, mfu, evalLoss, lastCheckpoint, outcome, and
  resized: a message when the run resumed through a universal checkpoint on another data-parallel size; stopReason:
  EarlyStopped when training.earlyStopping ended it; bestEvalLoss and bestEvalStep: its best evaluation),
  the values of the run's summary.json; the operator reads it from the pod status, so a finished
  job's status shows the end of training even when no scrape saw it.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

RESTART_ENV = "LLMTRAIN_RESTART"
FINAL_SCRAPE_ENV = "LLMTRAIN_FINAL_SCRAPE_SECONDS"  # monitoring.finalScrapeSeconds; unset (local runs): no wait
EXIT_BAD_INPUT = 5
FINAL_STATE_PREFIX = "llmtrain-final "
EARLY_STOPPED = "EarlyStopped"  # the final state's stopReason, and the reason of the job's Succeeded condition
FINAL_STATE_KEYS = ("step", "totalSteps", "loss", "tokensPerSecond", "mfu", "evalLoss", "lastCheckpoint", "outcome", "resized",
                    "stopReason", "bestEvalLoss", "bestEvalStep")


def final_state_line(state: dict[str, Any]) -> str:
    clean = {k: v for k, v in state.items() if k in FINAL_STATE_KEYS and v is not None
             and not (isinstance(v, float) and not math.isfinite(v))}
    return FINAL_STATE_PREFIX + json.dumps(clean, separators=(",", ":"))


def parse_final_state(message: Optional[str]) -> Optional[dict[str, Any]]:
    """The final state in a termination message, if it ends with one (the kubelet keeps its last 4 KiB)."""
    for line in reversed((message or "").splitlines()):
        if line.startswith(FINAL_STATE_PREFIX):
            try:
                state = json.loads(line[len(FINAL_STATE_PREFIX):])
            except ValueError:
                return None
            return state if isinstance(state, dict) else None
    return None


def strip_final_state(message: Optional[str]) -> str:
    """The human part of a termination message."""
    return "\n".join(line for line in (message or "").splitlines() if not line.startswith(FINAL_STATE_PREFIX)).strip()
