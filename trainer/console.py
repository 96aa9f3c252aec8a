"""What `llm-train run` shows while the ranks train: JSON lines, or a view for a person at a terminal.

Either way every line DeepSpeed's launcher and the ranks print goes to <output-dir>/train.log, and the console
gets each line too:

* JsonConsole (`--log-format json`, the default when stdout is not a terminal): rank 0's JSON lines as they are,
  warnings as {"event": "warning"}, and llm-train's own events ("run", "already_complete", "failed", "error").
  Nothing else, on stdout only.
* TextConsole (`--log-format text`, the default on a terminal): a progress bar (on a terminal) and a few lines:
  the model and batch plan at the start, each checkpoint, warnings, and how it ended. No DeepSpeed INFO chatter.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import deque
from pathlib import Path
from typing import Any, Optional, TextIO

from .rundir import SUMMARY

DEEPSPEED_LOG = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+\] \[(?P<level>[A-Z]+)\]")
PYTHON_WARNING = re.compile(r"\b[A-Z]\w*Warning: |^\[W\d{4} ")  # warnings.warn(...), and c10's [W1130 ...]
RANK_PREFIX = re.compile(r"^\[rank\d+\]: ")  # torch's prefix on the ranks' tracebacks
# Not worth a person's attention: llm-train run passes no hostfile on purpose (one node), and a failed rank is
# reported at the end with its error.
NOT_SHOWN = ("Unable to find hostfile", "exits with return code")


def parse_event(line: str) -> Optional[dict[str, Any]]:
    """A JSON object line of rank 0 (log records and events), else None."""
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def is_warning(line: str) -> bool:
    """Warnings and errors worth a person's attention (DeepSpeed's INFO lines are not)."""
    logged = DEEPSPEED_LOG.match(line)
    if logged:
        return logged["level"] in ("WARNING", "ERROR", "CRITICAL") and not any(s in line for s in NOT_SHOWN)
    return bool(PYTHON_WARNING.search(line)) or line.startswith("llmtrain:")


def is_chatter(line: str) -> bool:
    logged = DEEPSPEED_LOG.match(line)
    return (logged is not None and logged["level"] in ("INFO", "DEBUG")) or "built successfully" in line


def human(x: float) -> str:
    """116480 -> 116K, 27757.9 -> 27.8K, 1.3e9 -> 1.3B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def shown(path: str | os.PathLike) -> str:
    """A path as the person would type it: relative to the working directory when inside it."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def loss_span(first: Optional[float], last: Optional[float]) -> str:
    return f"loss {'?' if first is None else f'{first:.2f}'} → {'?' if last is None else f'{last:.2f}'}"


class Console:
    """What both views are told. Each has: begin, line (one line of the ranks' output), already_complete,
    complete, preempted, failed, error, close."""

    wants_steps = False  # whether the ranks should print a line per step (--step-events)

    def __init__(self, stream: Optional[TextIO] = None):
        self.stream = stream or sys.stdout  # the current stdout, not the one at import time
        self.tail: deque[str] = deque(maxlen=500)  # the end of the ranks' output

    def describe(self, job: str, out: Path, total_steps: int, model: str) -> None:
        self.job, self.out, self.total, self.model = job, out, total_steps, model


class JsonConsole(Console):
    def emit(self, record: dict[str, Any]) -> None:
        print(json.dumps(record), file=self.stream, flush=True)

    def begin(self, ranks: int, device: str, log: Path, removed: list[str]) -> None:
        self.emit({"event": "run", "job": self.job, "ranks": ranks, "device": device, "output_dir": str(self.out),
                   "log": str(log), "removed": removed})

    def line(self, text: str) -> None:
        self.tail.append(text)
        if parse_event(text) is not None:
            print(text, file=self.stream, flush=True)  # as rank 0 wrote it: the pods' format
        elif is_warning(text):
            self.emit({"event": "warning", "message": text})

    def already_complete(self, step: int, first: Optional[float], last: Optional[float]) -> None:
        self.emit({"event": "already_complete", "job": self.job, "step": step, "initial_loss": first,
                   "final_loss": last, "output_dir": str(self.out)})

    def complete(self, step: int, summary: dict[str, Any], first: Optional[float], last: Optional[float]) -> None:
        pass  # rank 0 said {"event": "complete"}; summary.json has the rest

    def preempted(self, marker: dict[str, Any]) -> None:
        pass  # rank 0 said {"event": "preempted"}

    def failed(self, code: int, log: Path) -> None:
        self.emit({"event": "failed", "job": self.job, "exit_code": code, "log": str(log),
                   "error": error_lines(self.tail)})

    def error(self, message: str) -> None:
        self.emit({"event": "error", "message": message})

    def close(self) -> None:
        pass


class TextConsole(Console):
    def __init__(self, stream: TextIO = sys.stdout, bar: bool = True):
        super().__init__(stream)
        self.wants_steps = bar
        self.bar, self.bar_done = None, False
        self.resumed_at = 0
        self.warned: set[str] = set()  # every rank prints the same warning: show it once

    def say(self, text: str) -> None:
        if self.bar is not None and self.bar.n >= self.total:
            self.close()
        if self.bar is not None:
            self.bar.write(text, file=self.stream)  # above the bar
        else:
            print(text, file=self.stream, flush=True)

    def begin(self, ranks, device, log, removed) -> None:
        if removed:
            self.say(f"removed the earlier run from {shown(self.out)}: {', '.join(removed)}")
        self.say(f"{self.job}: {ranks} {device.upper()} rank{'s' if ranks > 1 else ''}, output {shown(self.out)} "
                 f"(DeepSpeed's log: {shown(log)})")

    def line(self, text: str) -> None:
        self.tail.append(text)
        record = parse_event(text)
        if record is None:
            warning = RANK_PREFIX.sub("", text)
            if is_warning(warning) and warning not in self.warned:
                self.warned.add(warning)
                self.say(warning)
            return
        event, r = record.get("event"), record
        if event == "start":
            self.say(f"model {self.model}: {human(r['parameters'])} parameters; batch {r['global_batch']} × "
                     f"{r['seq_len']} tokens = {r['micro_batch']} per rank × {r['world_size']} ranks × "
                     f"{r['accumulation']} accumulation step{'s' if r['accumulation'] > 1 else ''}; "
                     f"{r['precision']}, ZeRO-{r['zero_stage']}")
        elif event == "resume":
            self.resumed_at = record["step"]
            self.say(f"resuming at step {record['step']} from checkpoint {record['tag']}")
        elif event == "checkpoint":
            self.say(f"checkpoint at step {record['step']}: {shown(record['path'])}")
        elif event == "step" or (event is None and "step" in record):  # a step, or a log step's record
            self.advance(record["step"], record.get("loss"))

    def advance(self, step: int, loss: Optional[float]) -> None:
        if self.bar is None:
            if not self.wants_steps or self.bar_done:
                return
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.resumed_at, desc=self.job, unit="step",
                            file=self.stream, dynamic_ncols=True)
        assert self.bar is not None
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        self.bar.update(max(0, step - self.bar.n))
        if self.bar.n >= self.total and loss is not None:
            self.close()  # at the last step's loss: the bar keeps the training time, not the export's

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.bar_done = True  # one bar per run

    def already_complete(self, step, first, last) -> None:
        losses = f" ({loss_span(first, last)})" if first is not None or last is not None else ""
        self.say(f"{self.job} already complete at step {step}{losses}: {shown(self.out)}; pass --fresh to train again")

    def complete(self, step, summary, first, last) -> None:
        self.close()
        resumed = f" (resumed at step {self.resumed_at})" if self.resumed_at else ""
        speed = f", {human(summary['tokens_per_second'])} tokens/s" if summary.get("tokens_per_second") else ""
        self.say(f"{self.job} complete at step {step}{resumed}: {loss_span(first, last)}{speed}")
        if summary.get("model"):
            self.say(f"  model    {shown(summary['model'])}")
        self.say(f"  summary  {shown(self.out / SUMMARY)}")

    def preempted(self, marker) -> None:
        self.close()
        self.say(f"{self.job} stopped at step {marker.get('step')} ({marker.get('reason')}) with checkpoint "
                 f"{marker.get('tag')} saved; run again to resume")

    def failed(self, code, log) -> None:
        self.close()
        self.say(f"{self.job} failed (launcher exit code {code}, no completion marker); the full output is in {shown(log)}")
        for text in error_lines(self.tail):
            self.say(f"  {text}")

    def error(self, message: str) -> None:
        self.close()
        print(f"llm-train: {message}", file=sys.stderr, flush=True)


def error_lines(output: deque[str]) -> list[str]:
    """What went wrong: each distinct exception line of the tracebacks, else the last lines of the output."""
    errors, in_traceback = [], False
    for text in (RANK_PREFIX.sub("", line) for line in output):
        if text.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and text and not text[0].isspace():  # the first unindented line ends the frames
            in_traceback = False
            if text not in errors:
                errors.append(text)
    return errors or [line for line in output if not is_chatter(line)][-10:]
