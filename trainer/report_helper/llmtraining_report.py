"""Report training progress from a program that is not HF Trainer: one call per step (stdlib only).

    import llmtraining_report
    llmtraining_report.step(step, total_steps=1000, loss=loss.item(), learning_rate=lr)
    ...
    llmtraining_report.finished()   # after the last step

The in-pod launcher puts this file's directory on PYTHONPATH and sets KUBEFLOW_TRAINER_SERVER_URL and
KUBEFLOW_TRAINER_SERVER_TOKEN; each call POSTs the payload transformers' KubeflowCallback posts to the same
receiver (progress_receiver.py), which serves it as llmtrain_* series on monitoring.port. Only global rank 0
($RANK unset or 0) reports, as in HF. A call never raises and never blocks training for more than `timeout`
seconds: without the launcher (no env) it does nothing, and a failed post is said once on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from typing import Optional

_warned = False


def _post(trainer_status: dict, timeout: float) -> bool:
    global _warned
    url, token_path = os.environ.get("KUBEFLOW_TRAINER_SERVER_URL"), os.environ.get("KUBEFLOW_TRAINER_SERVER_TOKEN")
    if not url or not token_path or os.environ.get("RANK", "0") != "0":
        return False
    try:
        with open(token_path, encoding="utf-8") as f:
            token = f.read().strip()
        request = urllib.request.Request(url, data=json.dumps({"trainerStatus": trainer_status}).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the launcher's loopback URL)
            return response.status == 200
    except Exception as exc:  # progress must never break training
        if not _warned:
            _warned = True
            print(f"llmtraining_report: WARNING: progress not reported to {url}: {exc}", file=sys.stderr, flush=True)
        return False


def step(step: int, total_steps: Optional[int] = None, loss: Optional[float] = None, learning_rate: Optional[float] = None,
         *, grad_norm: Optional[float] = None, eval_loss: Optional[float] = None, timeout: float = 2.0) -> bool:
    """The optimizer step just completed (the step count, not the micro-batch), and what is known of it.
    True when the receiver took it."""
    metrics = {"current_step": step, "total_steps": total_steps, "loss": loss, "learning_rate": learning_rate,
               "grad_norm": grad_norm, "eval_loss": eval_loss}
    status: dict = {"metrics": [{"name": k, "value": str(float(v))} for k, v in metrics.items() if v is not None]}
    if total_steps:
        status["progressPercentage"] = min(99, int(100 * step / total_steps))  # 100 is finished()'s
    return _post(status, timeout)


def finished(timeout: float = 2.0) -> bool:
    """Training ended (llmtrain_finished 1)."""
    return _post({"progressPercentage": 100, "estimatedRemainingSeconds": 0}, timeout)
