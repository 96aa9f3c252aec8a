"""A user's program writes none of our error markers: its failure is read from the tail of its stderr.

The launcher passes the command's stderr through (the pod log stays whole) and keeps the last lines; on a
failure the termination message carries the failing rank and its error: the rank that the launcher saw exit first
(rankwatch.py), with its own exception line (or the signal that killed it), when it saw one; else what the output
says (torch's `[rankN]:` prefixes, torchrun's failure summary `rank : N`), else `? on node N`.

The watch comes first because the tail's last exception is usually a victim's: a rank SIGKILLed in a pod prints
nothing, and its peers, whose collectives lost it, print `[rankN]: RuntimeError: ... Connection closed by peer`
(torch.distributed's excepthook adds the prefix once a process group exists) just before the runner stops them.
"""

from __future__ import annotations

import collections
import os
import re
import sys
import threading
from typing import IO, Optional

from .outcome import signal_name
from .rankwatch import RankExit

TAIL_LINES = 400
_RANK_PREFIX = re.compile(r"^\[rank(\d+)\]:\s?")
_SUMMARY_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
# `ValueError: bad shard`, `torch.distributed.DistBackendError: ...`, `KeyboardInterrupt`
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(:.*)?$")


class StderrTail:
    """Copies a pipe to our stderr in a thread and keeps its last lines."""

    def __init__(self, pipe: IO[bytes], out: Optional[IO[bytes]] = None) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._pipe, self._out = pipe, out or sys.stderr.buffer
        self._thread = threading.Thread(target=self._copy, name="stderr-tail", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        for raw in iter(self._pipe.readline, b""):
            try:
                self._out.write(raw)
                self._out.flush()
            except (OSError, ValueError):
                pass
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)


def failing_rank_error(lines: list[str], node_rank: Optional[str] = None, first: Optional[RankExit] = None) -> Optional[dict]:
    """{"rank", "error"} of a failed program: `first`, the rank the launcher saw fail first, with its own error when
    it is known (_first_rank_error); else the stderr tail's last exception line and who raised it."""
    if first is not None:
        named = _first_rank_error(lines, first)
        if named is not None:
            return named
    return _last_exception(lines, node_rank)


def _first_rank_error(lines: list[str], first: RankExit) -> Optional[dict]:
    """The error of the rank that failed first: killed by a signal, it printed none (the signal is the error); else its
    last exception line (`[rankN]:`-prefixed output: its own lines; output without prefixes, DeepSpeed's runner before
    a process group exists: the first exception printed), else its exit status. None: the watch saw no exit status
    (reaped in between) and the output names no exception of that rank."""
    if first.returncode is not None and first.returncode < 0:
        return {"rank": first.rank, "error": f"killed by {signal_name(-first.returncode)}"}
    prefixed = [m for m in map(_RANK_PREFIX.match, lines) if m]
    if prefixed:
        own_lines = [m.string[m.end():].strip() for m in prefixed if m.group(1) == first.rank]
        own = next((text for text in reversed(own_lines) if _EXCEPTION.match(text)), None)
    else:
        own = next((line.strip() for line in lines if _EXCEPTION.match(line.strip())), None)
    if own is None and first.returncode is None:
        return None
    return {"rank": first.rank, "error": own or f"exited with status {first.returncode}"}


def _last_exception(lines: list[str], node_rank: Optional[str]) -> Optional[dict]:
    """The last exception line of the tail and the rank that raised it (its prefix, or torchrun's summary)."""
    error, rank = None, None
    for line in reversed(lines):
        prefix = _RANK_PREFIX.match(line)
        text = line[prefix.end():] if prefix else line
        if error is None and _EXCEPTION.match(text.strip()):
            error, rank = text.strip(), prefix.group(1) if prefix else None
        if error is not None and rank is None:
            summary = _SUMMARY_RANK.match(line)
            if summary:
                rank = summary.group(1)
        if error is not None and rank is not None:
            break
    if rank is None:
        rank = next((m.group(1) for m in map(_SUMMARY_RANK.match, lines) if m), None)
    if error is None:
        return None
    return {"rank": rank or (f"? on node {node_rank}" if node_rank is not None else "?"), "error": error}


def node_rank() -> Optional[str]:
    return os.environ.get("NODE_RANK")
