"""Which rank failed first, from /proc: the ranks of DeepSpeed's runner print no rank prefix.

A program's ranks are the children of the per-node runner (DeepSpeed's `deepspeed.launcher.launch`, torchrun),
each with `RANK` in its environment. The runner reaps them (not us), but a dead child stays a zombie until its
parent polls (DeepSpeed's launcher: once a second), and a zombie's /proc/PID/stat still carries its wait status.
So a thread that scans /proc every POLL seconds sees which rank exited first and how, before the runner kills
the others. Standard library only: it runs in the user's image (llm_trainer.inject).
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Callable, Optional

# the per-node runners whose children are the ranks (matched in the parent's command line)
RUNNER_MARKERS = ("deepspeed.launcher.launch", "torch.distributed.run", "torchrun")
_EXIT_CODE_FIELD = 49  # stat field 52 (exit_code, Linux >= 3.5), counted from the state field after "comm)"


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    zombie: bool
    wait_status: Optional[int]  # a zombie's waitpid(2) status, else None


@dataclass(frozen=True)
class RankExit:
    rank: str
    pid: int
    returncode: Optional[int]  # negative: killed by that signal; None: gone before we saw its status
    scan: int  # the scan that first saw it dead: the order of the exits


def returncode_of(wait_status: int) -> int:
    return -(wait_status & 0x7F) if wait_status & 0x7F else (wait_status >> 8) & 0xFF


def _likely_cause(e: RankExit) -> int:
    """Within one scan: killed by a signal (SIGKILL, SIGSEGV: nothing a peer's death causes) first, then an exit
    status (possibly a peer's lost-connection error), then SIGTERM (the runner stopping the rest) or unknown."""
    if e.returncode is None or e.returncode == -signal.SIGTERM:
        return 2
    return 0 if e.returncode < 0 else 1


def first_failure(exits: list[RankExit]) -> Optional[RankExit]:
    """The rank that failed first: the earliest scan, then the likeliest cause within it."""
    failed = [e for e in exits if e.returncode != 0]
    if not failed:
        return None
    return min(failed, key=lambda e: (e.scan, _likely_cause(e), int(e.rank) if e.rank.isdigit() else 0))


def read_proc(pid: int) -> Optional[ProcInfo]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    zombie = fields[0] == b"Z"
    status = int(fields[_EXIT_CODE_FIELD]) if zombie and len(fields) > _EXIT_CODE_FIELD else None
    return ProcInfo(pid, int(fields[1]), zombie, status)


def read_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_rank(pid: int) -> Optional[str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return item[5:].decode(errors="replace")
    return None


def list_pids() -> list[int]:
    try:
        return [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []


def descendants(root: int, prune: Callable[[int], bool] = lambda pid: False) -> list[int]:
    """root's descendants (zombies included) from /proc/PID/task/TID/children, so a scan reads a few processes and
    not every one of the host (`llm-train run` on a laptop); all of /proc where the kernel has no such file. A pid
    for which prune() is true is listed, its own descendants are not (a rank's threads and workers: RankWatch.of_tree)."""
    if not os.path.exists(f"/proc/{root}/task/{root}/children"):
        return list_pids() if os.path.isdir(f"/proc/{root}") else []
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid != root and prune(pid):
            continue
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


class RankWatch:
    """Scans /proc in a thread: pid -> rank of the runner's live children, and each rank's exit in order.

    POLL: DeepSpeed's launcher polls its ranks once a second and reaps the first that failed at once; a rank reaped
    before our next scan leaves no status (returncode None), so the chance of missing how it died is about POLL/2 s.
    A scan of a tree (of_tree) reads a few /proc files (the runners' threads, the ranks' stat), not the ranks' threads."""

    POLL = 0.02

    def __init__(self, list_pids: Callable[[], list[int]] = list_pids, read_proc: Callable[[int], Optional[ProcInfo]] = read_proc,
                 read_cmdline: Callable[[int], str] = read_cmdline, read_rank: Callable[[int], Optional[str]] = read_rank) -> None:
        self._list_pids, self._read_proc, self._read_cmdline, self._read_rank = list_pids, read_proc, read_cmdline, read_rank
        self.ranks: dict[int, str] = {}  # live (or zombie) ranks we know
        self.exits: list[RankExit] = []
        self.scans = 0
        self._runners: dict[int, bool] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def scan(self) -> None:
        self.scans += 1
        seen: set[int] = set()
        for pid in self._list_pids():
            info = self._read_proc(pid)
            if info is None:
                continue
            if info.ppid not in self._runners:
                cmdline = self._read_cmdline(info.ppid)
                self._runners[info.ppid] = any(marker in cmdline for marker in RUNNER_MARKERS)
            if not self._runners[info.ppid]:
                continue
            if pid not in self.ranks and not info.zombie:
                rank = self._read_rank(pid)
                if rank is None:
                    continue
                self.ranks[pid] = rank
            if pid not in self.ranks:
                continue
            seen.add(pid)
            if info.zombie:
                self._exited(pid, returncode_of(info.wait_status) if info.wait_status is not None else None)
        for pid in [p for p in self.ranks if p not in seen]:  # reaped before we saw the zombie
            self._exited(pid, None)

    def _exited(self, pid: int, returncode: Optional[int]) -> None:
        self.exits.append(RankExit(self.ranks.pop(pid), pid, returncode, self.scans))

    def first_failure(self) -> Optional[RankExit]:
        return first_failure(self.exits)

    @classmethod
    def of_tree(cls, root: int) -> RankWatch:
        """A watch over root's descendants that does not walk below the ranks it knows."""
        watch = cls()
        watch._list_pids = lambda: descendants(root, prune=watch.ranks.__contains__)
        return watch

    # -- the thread
    def start(self) -> RankWatch:
        self._thread = threading.Thread(target=self._run, name="rank-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.POLL):
            self.scan()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.scan()  # whatever exited since the last scan
