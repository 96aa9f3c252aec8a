"""Prometheus metrics, JSON log lines and progress.json.

Local rank 0 of every node serves /metrics on monitoring.port (LLMTRAIN_METRICS_PORT overrides it, 0 turns it
off), so every worker pod answers on the same port. Loss, tokens/s and MFU are global (all-reduced at log
steps), so each node reports the same training values; gpu_memory_bytes is the maximum over all ranks.
Values change only at log intervals: the step loop itself never synchronizes with the GPU, except for
step_time_seconds, which observes the host time of every step (equal to the device time once the host waits
for the GPU in steady state).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .markers import PROGRESS
from .checkpoint import atomic_write

PORT_ENV = "LLMTRAIN_METRICS_PORT"
PREFIX = "llmtrain"
STEP_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# dense bf16 peak FLOP/s per accelerator, matched against torch.cuda.get_device_name()
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
             ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("A10G", 125e12), ("L4", 121e12))


def peak_flops(configured_tflops: Optional[float], device_type: str) -> Optional[float]:
    """monitoring.peakTFLOPs, else the detected GPU's dense bf16 peak; None (no MFU) on CPU or unknown GPUs."""
    if configured_tflops:
        return configured_tflops * 1e12
    if device_type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


class Metrics:
    """The llmtrain_* metrics in their own registry, served over HTTP when port is set."""

    def __init__(self, port: Optional[int], info: dict[str, str]):
        from prometheus_client import CollectorRegistry, Gauge, Histogram, Info, start_http_server

        self.registry = r = CollectorRegistry()
        g = lambda name, doc: Gauge(f"{PREFIX}_{name}", doc, registry=r)  # noqa: E731
        self.step = g("step", "Last completed optimizer step.")
        self.total_steps = g("total_steps", "Optimizer steps the job trains (spec.training.steps).")
        self.loss = g("loss", "Training loss, mean over the ranks and the steps of the last logging interval.")
        self.learning_rate = g("learning_rate", "Learning rate of the last step.")
        self.grad_norm = g("grad_norm", "Global gradient norm of the last step (before clipping).")
        self.tokens_per_second = g("tokens_per_second", "Training throughput of all ranks over the last logging interval.")
        self.mfu = g("mfu", "Model FLOPs utilization (PaLM FLOPs per token) over the last logging interval, 0-1.")
        self.gpu_memory_bytes = g("gpu_memory_bytes", "Peak accelerator memory allocated, maximum over the ranks.")
        self.last_checkpoint_step = g("last_checkpoint_step", "Step of the newest complete checkpoint.")
        self.step_time = Histogram(f"{PREFIX}_step_time_seconds", "Host wall time of each optimizer step.",
                                   buckets=STEP_TIME_BUCKETS, registry=r)
        Info(PREFIX, "The training job.", registry=r).info(info)
        self.port = None
        self.server = None
        if port:
            try:
                self.server, _ = start_http_server(port, registry=r)
                self.port = port
            except OSError as exc:  # never fail training over metrics
                print(f"llmtrain: metrics endpoint on port {port} not started: {exc}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


def metrics_port(configured: int) -> Optional[int]:
    value = int(os.environ.get(PORT_ENV, configured))
    return value or None


class Progress:
    """progress.json in the output directory."""

    def __init__(self, output_dir: Path, total_steps: int):
        self.path = output_dir / PROGRESS
        self.state: dict[str, Any] = {"step": 0, "totalSteps": total_steps, "loss": None, "tokensPerSecond": None,
                                      "mfu": None, "lastCheckpoint": None}

    def update(self, **values: Any) -> None:
        self.state.update(values, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        atomic_write(self.path, json.dumps(self.state) + "\n")


def log_json(record: dict[str, Any], bar=None) -> None:
    """One JSON line on stdout (above the progress bar, if there is one)."""
    if bar is not None:
        bar.write(json.dumps(record), file=sys.stdout)
    else:
        print(json.dumps(record), flush=True)
