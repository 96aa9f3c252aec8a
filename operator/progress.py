"""Training progress for the job status, pulled from rank 0's Prometheus endpoint.

Pull, like Prometheus itself: worker pods hold no API credentials (their ServiceAccount token is not
even mounted), so the operator reads `llmtrain_*` from worker 0's /metrics (job_loop.py, once per
interval while the job runs) and the lifecycle decides what the numbers mean.
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from prometheus_client.parser import text_string_to_metric_families

from .pods import Pod, node_rank, restart_of

FIELDS = {
    "llmtrain_step": "step",
    "llmtrain_total_steps": "totalSteps",  # a user's program says its total (the built-in trainer's is spec.training.steps)
    "llmtrain_loss": "loss",
    "llmtrain_tokens_per_second": "tokensPerSecond",
    "llmtrain_mfu": "mfu",
    "llmtrain_eval_loss": "evalLoss",
    "llmtrain_best_eval_loss": "bestEvalLoss",
    "llmtrain_best_eval_step": "bestEvalStep",
    "llmtrain_last_checkpoint_step": "lastCheckpointStep",
}


@dataclass(frozen=True)
class ScrapeTarget:
    url: str
    pod_uid: str  # the report is only ever applied to this pod's gang


def parse_progress(text: str) -> dict[str, Any]:
    """The progress fields present in a Prometheus text exposition."""
    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = FIELDS.get(sample.name)
            if key is not None:
                if not math.isfinite(sample.value):  # a diverged loss is NaN; JSON (and the status) cannot hold it
                    continue
                found[key] = int(sample.value) if key in ("step", "totalSteps", "lastCheckpointStep", "bestEvalStep") else round(sample.value, 6)
    return found


def fetch_metrics(url: str, timeout: float = 3.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (pod IP from the API server)
        return response.read().decode()


def scrape_target(pods: Sequence[Pod], gang: int, port: int) -> Optional[ScrapeTarget]:
    """Worker 0 of the current gang hosts global rank 0."""
    rank0: Optional[Mapping[str, Any]] = next((p for p in pods if node_rank(p) == 0 and restart_of(p) == gang), None)
    ip = ((rank0 or {}).get("status") or {}).get("podIP")
    if rank0 is None or not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return ScrapeTarget(url=f"http://{host}:{port}/metrics", pod_uid=rank0["metadata"].get("uid", ""))
