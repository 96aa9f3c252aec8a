"""Prometheus metrics, JSON log lines and progress.json.

Local rank 0 of every node serves /metrics on monitoring.port (LLMTRAIN_METRICS_PORT overrides it, 0 turns it
off), so every worker pod answers on the same port. Loss, tokens/s and MFU are global (all-reduced at log
steps), so each node reports the same training values; gpu_memory_bytes is the maximum over all ranks. A gauge
with no value yet is absent, not 0; after a resume the checkpoint's last logged values are restored. When
training ends, the endpoint keeps serving the final values for monitoring.finalScrapeSeconds.
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
from typing import Any, Callable, Optional

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


# Every llmtrain_* series: (name as exposed, type, labels, help). The code builds its metrics from this table
# and docs/trainer.md lists it (a test compares the two).
METRICS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("llmtrain_info", "info", ("job_name", "model", "architecture", "parameters", "world_size", "zero_stage", "precision",
                               "deepspeed_version", "torch_version"), "The training job: what is trained, where, with what."),
    ("llmtrain_step", "gauge", (), "Last completed optimizer step."),
    ("llmtrain_total_steps", "gauge", (), "Optimizer steps the job trains (spec.training.steps)."),
    ("llmtrain_loss", "gauge", (), "Training loss, mean over the ranks and the steps of the last logging interval."),
    ("llmtrain_learning_rate", "gauge", (), "Learning rate of the last logged step."),
    ("llmtrain_grad_norm", "gauge", (), "Global gradient norm of the last logged step (before clipping)."),
    ("llmtrain_eval_loss", "gauge", (), "Loss on the held-out data at the last evaluation, mean over its tokens and the ranks; absent before the first."),
    ("llmtrain_eval_perplexity", "gauge", (), "exp(llmtrain_eval_loss): held-out perplexity at the last evaluation; absent before the first."),
    ("llmtrain_best_eval_loss", "gauge", (), "Lowest held-out loss of the run so far (its checkpoint is kept and exported); absent before the first evaluation."),
    ("llmtrain_best_eval_step", "gauge", (), "Step of llmtrain_best_eval_loss."),
    ("llmtrain_tokens_per_second", "gauge", (), "Training throughput of all ranks over the last logging interval."),
    ("llmtrain_mfu", "gauge", (), "Model FLOPs utilization (PaLM FLOPs per token) over the last logging interval, 0-1; absent where the peak is unknown (CPU, unrecognised GPU)."),
    ("llmtrain_gpu_memory_bytes", "gauge", (), "Peak accelerator memory allocated, maximum over the ranks."),
    ("llmtrain_trained_tokens", "gauge", (), "Tokens trained so far by the job, resumed runs included (step × tokens per step)."),
    ("llmtrain_estimated_remaining_seconds", "gauge", (), "Seconds until training ends, as a user's program estimates it (HF Trainer); absent for the built-in trainer."),
    ("llmtrain_last_step_timestamp_seconds", "gauge", (), "Unix time the last optimizer step ended on this node (a hang shows as its age)."),
    ("llmtrain_last_checkpoint_step", "gauge", (), "Step of the newest complete checkpoint."),
    ("llmtrain_last_checkpoint_timestamp_seconds", "gauge", (), "Unix time the newest complete checkpoint was committed."),
    ("llmtrain_resumed_step", "gauge", (), "Step of the checkpoint this run resumed from; absent on a fresh start."),
    ("llmtrain_gang_restarts", "gauge", (), "Gang restarts of the job before this run (status.restarts when the operator created the pod)."),
    ("llmtrain_finished", "gauge", (), "1 once training ended on this node: complete, or stopped with a checkpoint saved; absent before."),
    ("llmtrain_steps_total", "counter", (), "Optimizer steps trained by this process (rate() of it: steps/s)."),
    ("llmtrain_tokens_total", "counter", (), "Tokens trained by this process (rate() of it: tokens/s)."),
    ("llmtrain_step_time_seconds", "histogram", (), "Host wall time of each optimizer step."),
)


class _Gauge:
    """A gauge that is absent until set: a loss of 0 would be a lie after a resume, and an MFU of 0 where unknown."""

    def __init__(self, name: str, doc: str):
        self.name, self.doc = name, doc
        self.value: Optional[float] = None

    def set(self, value: Optional[float]) -> None:
        self.value = None if value is None else float(value)


class _Gauges:
    """A Prometheus collector of the _Gauges that have a value."""

    def __init__(self, gauges: list[_Gauge]):
        self.gauges = gauges

    def describe(self):
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily(g.name, g.doc) for g in self.gauges]

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily(g.name, g.doc, value=g.value) for g in self.gauges if g.value is not None]


class Metrics:
    """The llmtrain_* metrics (METRICS) in their own registry, with the process' own, served over HTTP when port is set."""

    def __init__(self, port: Optional[int], info: dict[str, str]):
        from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector, start_http_server

        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_start_time_seconds, CPU, memory, open files
        docs = {name: doc for name, _, _, doc in METRICS}
        gauges = {name: _Gauge(name, doc) for name, kind, _, doc in METRICS if kind == "gauge"}
        r.register(_Gauges(list(gauges.values())))
        self.step = gauges["llmtrain_step"]
        self.total_steps = gauges["llmtrain_total_steps"]
        self.loss = gauges["llmtrain_loss"]
        self.learning_rate = gauges["llmtrain_learning_rate"]
        self.grad_norm = gauges["llmtrain_grad_norm"]
        self.eval_loss = gauges["llmtrain_eval_loss"]
        self.eval_perplexity = gauges["llmtrain_eval_perplexity"]
        self.best_eval_loss = gauges["llmtrain_best_eval_loss"]
        self.best_eval_step = gauges["llmtrain_best_eval_step"]
        self.tokens_per_second = gauges["llmtrain_tokens_per_second"]
        self.mfu = gauges["llmtrain_mfu"]
        self.gpu_memory_bytes = gauges["llmtrain_gpu_memory_bytes"]
        self.trained_tokens = gauges["llmtrain_trained_tokens"]
        self.last_step_time = gauges["llmtrain_last_step_timestamp_seconds"]
        self.last_checkpoint_step = gauges["llmtrain_last_checkpoint_step"]
        self.last_checkpoint_time = gauges["llmtrain_last_checkpoint_timestamp_seconds"]
        self.resumed_step = gauges["llmtrain_resumed_step"]
        self.gang_restarts = gauges["llmtrain_gang_restarts"]
        self.finished = gauges["llmtrain_finished"]
        self.steps = Counter("llmtrain_steps", docs["llmtrain_steps_total"], registry=r)
        self.tokens = Counter("llmtrain_tokens", docs["llmtrain_tokens_total"], registry=r)
        self.step_time = Histogram("llmtrain_step_time_seconds", docs["llmtrain_step_time_seconds"], buckets=STEP_TIME_BUCKETS, registry=r)
        Info(PREFIX, docs["llmtrain_info"], registry=r).info(info)
        self.port = None
        self.server = None
        if port:
            try:
                self.server, _ = start_http_server(port, registry=r)
                self.port = port
            except OSError as exc:  # never fail training over metrics, but say it loudly
                print(f"llmtrain: WARNING: metrics endpoint on port {port} not started ({exc}); monitoring.port clashes "
                      "with another process in the pod", file=sys.stderr, flush=True)

    def step_done(self, step: int, tokens: int) -> None:
        """Once per optimizer step: host-side numbers only (no GPU sync)."""
        self.step.set(step)
        self.steps.inc()
        self.tokens.inc(tokens)
        self.trained_tokens.set(step * tokens)
        self.last_step_time.set(time.time())

    def checkpoint_done(self, step: int, committed_at: float) -> None:
        self.last_checkpoint_step.set(step)
        self.last_checkpoint_time.set(committed_at)

    def close(self, linger_seconds: float = 0, stop: Optional[Callable[[], bool]] = None) -> None:
        """Stop serving; first keep serving the final values up to linger_seconds so that a last scrape (Prometheus,
        the operator) sees them, unless stop() says to go (e.g. SIGTERM)."""
        if self.server is None:
            return
        deadline = time.monotonic() + linger_seconds
        while time.monotonic() < deadline and not (stop and stop()):
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
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
