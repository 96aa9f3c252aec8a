"""Files through which the ranks tell `llm-train launch` (and the operator) how training ended.

    $LLMTRAIN_MARKER_DIR (default <output_dir>/markers), written by local rank 0 of every node:
      complete.json   {"step": N, ...}  after the final step, the final checkpoint, the model export and a
                                        barrier of all ranks: training finished on every rank.
      preempted.json  {"step": N, "tag": T, "reason": "SIGTERM"}  after a stop request (SIGTERM/SIGINT or
                                        --stop-at-step) was saved as checkpoint T; ranks then exit 0.
      final.json    {"step", "totalSteps", "loss", "tokensPerSecond", "lastCheckpoint", "outcome"}  beside either of
                                        the two: what the run ended with (the launcher's termination message carries it).
      error-rank<R>.json {"rank": R, "error": "RuntimeError: NCCL error …", "time": T}  by any rank that died of an
                                        exception: the launcher puts the first one into the pod's termination message.
    Neither file after the DeepSpeed runner exited (even with code 0: a rank killed by a signal, e.g. the OOM
    killer, is not reported as a failure by the runner) means the run failed. Both are removed at start.

    <output_dir>/progress.json, replaced atomically at every log interval and checkpoint by local rank 0 of
    every node: {"step", "totalSteps", "loss", "tokensPerSecond", "mfu", "lastCheckpoint", "time"}.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional


MARKER_DIR_ENV = "LLMTRAIN_MARKER_DIR"
COMPLETE = "complete.json"
PREEMPTED = "preempted.json"
PROGRESS = "progress.json"
FINAL = "final.json"
ERROR_PREFIX = "error-rank"
ERROR_MAX_CHARS = 1000  # the kubelet keeps 4 KiB of a termination message


def marker_dir(output_dir: str | os.PathLike) -> Path:
    return Path(os.environ.get(MARKER_DIR_ENV) or Path(output_dir) / "markers")


def clear(directory: Path, errors: bool = False) -> list[str]:
    """Remove stale markers of an earlier run; returns the names removed. errors: the ranks' error markers too
    (only before the ranks start: a rank may fail before another one clears)."""
    removed = []
    stale_errors = [p.name for p in directory.glob(f"{ERROR_PREFIX}*.json")] if errors and directory.is_dir() else []
    for name in (COMPLETE, PREEMPTED, FINAL, *stale_errors):
        try:
            (directory / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


def write(directory: Path, name: str, content: dict[str, Any]) -> None:
    atomic_write(directory / name, json.dumps(content) + "\n")


def read(directory: Path, name: str) -> Optional[dict[str, Any]]:
    """The marker's content; None if absent, {} if present but unreadable (it still says the run got there)."""
    try:
        content = json.loads((directory / name).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def write_error(directory: Path, rank: int, exc: BaseException) -> None:
    """Best effort, from a dying rank: the exception's last line, which names what went wrong."""
    line = f"{type(exc).__name__}: {exc}".strip().splitlines()
    error = " ".join(part.strip() for part in line)[:ERROR_MAX_CHARS]
    try:
        write(directory, f"{ERROR_PREFIX}{rank}.json", {"rank": rank, "error": error, "time": time.time()})
    except OSError:
        pass


def first_error(directory: Path) -> Optional[dict[str, Any]]:
    """The earliest rank error: the cause; later ones are usually its victims (peers losing the collective)."""
    found = [read(directory, p.name) for p in directory.glob(f"{ERROR_PREFIX}*.json")] if directory.is_dir() else []
    errors = [e for e in found if e and "error" in e]
    return min(errors, key=lambda e: (e.get("time", float("inf")), e.get("rank", 0))) if errors else None


def atomic_write(path: Path, text: str) -> None:
    """Write then rename, fsynced: readers see the old or the new content, never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.uname().nodename}-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
