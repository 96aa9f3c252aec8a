"""Helpers for the trainer tests: tiny job manifests, and CPU ranks started as DeepSpeed's launcher starts them."""

from __future__ import annotations

import copy
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from llm_trainer.cli import free_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[2]

BASE_JOB: dict[str, Any] = {
    "apiVersion": "llmtraining.dev/v1alpha1",
    "kind": "LLMTrainingJob",
    "metadata": {"name": "t"},
    "spec": {
        "image": "trainer:test",
        "accelerator": "cpu",
        "nodes": 1,
        "slotsPerNode": 2,
        "model": {"preset": "tiny", "seqLen": 32},
        "data": {"format": "synthetic"},
        "training": {"steps": 30, "microBatchSize": 2, "globalBatchSize": 8, "precision": "fp32", "zeroStage": 1,
                     "learningRate": 0.01, "warmupSteps": 3, "logIntervalSteps": 1, "compile": False, "seed": 7},
        "checkpoint": {"intervalSteps": 10, "keep": 2},
    },
}


def deep_update(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in changes.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_job(directory: Path, changes: Optional[dict] = None, name: str = "job.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(deep_update(BASE_JOB, changes or {})))
    return path


def rank_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", LLMTRAIN_METRICS_PORT="0")
    env.pop("LLMTRAIN_MARKER_DIR", None)
    env.update(extra)
    return env


@dataclass
class Run:
    codes: list[int]
    out: Path
    logs: list[Path]
    port: str = ""  # the rendezvous port (MASTER_PORT)
    summary_text: Optional[str] = None  # summary.json as this run left it: a later run in the same directory rewrites it

    @property
    def summary(self) -> dict[str, Any]:
        if self.summary_text is None:
            raise FileNotFoundError(f"{self.out / 'summary.json'}: the run wrote none")
        return json.loads(self.summary_text)

    @property
    def losses(self) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in self.summary["losses"]}

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:]) for p in self.logs)


def start_ranks(job: Path, out: Path, world: int = 2, args: tuple[str, ...] = (), env: Optional[dict] = None, port: Optional[str] = None):
    """Start `world` worker processes with the env DeepSpeed's launch.py gives them (one node)."""
    out.mkdir(parents=True, exist_ok=True)
    port = port or str(free_port())
    procs, logs = [], []
    attempt = len(list(out.glob("run*-rank0.log")))  # a resumed run keeps the earlier run's logs
    for rank in range(world):
        log = out / f"run{attempt}-rank{rank}.log"
        e = rank_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_SIZE=str(world),
                     CROSS_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **(env or {}))
        cmd = [sys.executable, "-u", "-m", "llm_trainer.worker", f"--local_rank={rank}", "--job", str(job),
               "--output-dir", str(out), *args]
        with open(log, "w") as f:
            procs.append(subprocess.Popen(cmd, env=e, stdout=f, stderr=subprocess.STDOUT, cwd=REPO))
        logs.append(log)
    return procs, logs


def run_ranks(job: Path, out: Path, world: int = 2, args: tuple[str, ...] = (), env: Optional[dict] = None,
              timeout: float = 240) -> Run:
    port = str(free_port())
    started = time.time()
    procs, logs = start_ranks(job, out, world, args, env, port=port)
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(1, deadline - time.monotonic())))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    summary = out / "summary.json"
    written = summary.exists() and summary.stat().st_mtime >= started  # not an earlier run's
    return Run(codes, out, logs, port, summary.read_text() if written else None)


@dataclass
class CliRun:
    code: int
    stdout: str  # on a terminal: everything it showed, stderr included
    stderr: str

    @property
    def lines(self) -> list[str]:
        """What a person reads: the output split at newlines and at the bar's carriage returns."""
        return [line.strip() for line in re.split(r"[\r\n]+", self.stdout + self.stderr) if line.strip()]


def llm_train(*args, tty: bool = False, timeout: float = 300) -> CliRun:
    """`llm-train ARGS`, its output piped, or on a pseudo-terminal (stdout.isatty() is true) with tty=True."""
    cmd = [sys.executable, "-m", "llm_trainer.cli", *map(str, args)]
    if not tty:
        proc = subprocess.run(cmd, env=rank_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
        return CliRun(proc.returncode, proc.stdout, proc.stderr)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns: room for a bar
    proc = subprocess.Popen(cmd, env=rank_env(), cwd=REPO, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([controller], [], [], 1)[0]:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # EIO: the last holder of the terminal closed it
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    return CliRun(code, b"".join(chunks).decode(errors="replace"), "")
