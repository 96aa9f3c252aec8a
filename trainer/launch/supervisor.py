"""Children, their exit statuses, and signal forwarding: the launcher's supervisor, shared with `llm-train run`.

A stop request (SIGTERM/SIGINT) goes to the DeepSpeed ranks only, so each can save a checkpoint and exit on its
own terms: signalling DeepSpeed's per-node launcher would make it SIGKILL the ranks 30 s later, in the middle of
a long checkpoint save. A second signal goes to the whole command.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Optional

from .common import log
from .outcome import signal_name

DS_LAUNCH_MODULE = "deepspeed.launcher.launch"  # DeepSpeed's per-node launcher; its children are the ranks


def become_subreaper() -> None:
    """Orphaned descendants (e.g. ranks whose DeepSpeed launcher died) are re-parented to us, so we
    can wait for them before exiting (as PID 1 our exit would SIGKILL them mid-checkpoint)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError):
            pass


def returncode_of(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class ProcRef:
    """A pid, with the one psutil.Process method forward() uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)


def proc_children_of(parent_marker: str) -> list:
    """Processes whose parent's command line contains parent_marker, from /proc (Linux, no psutil)."""
    parents: dict[int, bool] = {}
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            if ppid not in parents:
                with open(f"/proc/{ppid}/cmdline", "rb") as f:
                    parents[ppid] = parent_marker in f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if parents[ppid]:
            found.append(ProcRef(int(entry)))
    return found


class Supervisor:
    """Children, their exit statuses, and signal forwarding."""

    POLL = 0.1

    def __init__(self, log: Callable[..., None] = log) -> None:
        self.log = log  # (level, message, **fields); `llm-train run` writes these into its train.log
        self.command: Optional[subprocess.Popen] = None
        self.sshd: Optional[subprocess.Popen] = None
        self.returncodes: dict[int, int] = {}
        self.received: Optional[int] = None
        self.signals = 0

    # -- processes
    def spawn(self, argv: list[str], env: Optional[dict] = None, **popen: Any) -> subprocess.Popen:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True, **popen)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = returncode_of(status)
            self.returncodes[pid] = code
            for proc in (self.command, self.sshd):
                if proc is not None and proc.pid == pid:
                    proc.returncode = code

    def exited(self, proc: Optional[subprocess.Popen]) -> bool:
        self.reap()
        return proc is None or proc.pid in self.returncodes

    def wait(self, proc: subprocess.Popen, timeout: Optional[float] = None) -> Optional[int]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.exited(proc):
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(self.POLL)
        return self.returncodes[proc.pid]

    def workload(self) -> list:
        """Live descendants other than sshd itself (its per-connection processes included)."""
        try:
            import psutil
        except ImportError:  # a program's image runs the injected stdlib-only launcher: leftovers are not tracked there
            return []

        out: list = []
        try:
            descendants = psutil.Process().children(recursive=True)
        except psutil.Error:
            return out
        for p in descendants:
            try:
                if p.status() == psutil.STATUS_ZOMBIE or p.name().startswith("sshd"):
                    continue
                out.append(p)
            except psutil.Error:
                continue
        return out

    def deepspeed_ranks(self) -> list:
        """Processes whose parent is DeepSpeed's per-node launcher (the training ranks)."""
        try:
            import psutil
        except ImportError:  # the injected launcher in a program's image: read /proc instead
            return proc_children_of(DS_LAUNCH_MODULE)

        ranks = []
        for p in self.workload():
            try:
                parent = p.parent()
                if parent is not None and DS_LAUNCH_MODULE in " ".join(parent.cmdline()):
                    ranks.append(p)
            except psutil.Error:
                continue
        return ranks

    # -- signals
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        self.signals += 1
        self.received = self.received or signum
        self.forward(signum, escalate=self.signals > 1)

    def forward(self, signum: int, *, escalate: bool = False) -> None:
        """First signal: to the DeepSpeed ranks only, so each can save a checkpoint and exit on its
        own terms (signalling DeepSpeed's launcher would make it SIGKILL the ranks 30 s later).
        No ranks yet, or a second signal: to the command's process group and everything else."""
        ranks = [] if escalate else self.deepspeed_ranks()
        if ranks:
            for p in ranks:
                self._send(p, signum)
            self.log("info", f"forwarded {signal_name(signum)} to the DeepSpeed ranks", pids=[p.pid for p in ranks])
            return
        targets = []
        if self.command is not None and not self.exited(self.command):
            try:
                os.killpg(self.command.pid, signum)
                targets.append(f"group {self.command.pid}")
            except ProcessLookupError:
                pass
        group = self.command.pid if self.command is not None else None
        for p in self.workload():
            try:
                if os.getpgid(p.pid) != group:
                    self._send(p, signum)
                    targets.append(p.pid)
            except OSError:
                continue
        self.log("info", f"forwarded {signal_name(signum)}", targets=targets)

    @staticmethod
    def _send(proc, signum: int) -> None:
        try:
            proc.send_signal(signum)
        except Exception:  # psutil.NoSuchProcess, ProcessLookupError
            pass

    def drain(self, timeout: Optional[float]) -> None:
        """Wait for leftover workload; after ``timeout`` SIGTERM it, 10 s later SIGKILL it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.reap()
            left = self.workload()
            if not left:
                return
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(self.POLL * 5)
        self.log("warning", "processes still running after the command exited; terminating them",
            pids=[p.pid for p in left], linger_timeout_s=timeout)
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for p in left:
                self._send(p, sig)
            end = time.monotonic() + grace
            while time.monotonic() < end:
                self.reap()
                left = self.workload()
                if not left:
                    return
                time.sleep(self.POLL)

    def stop_sshd(self) -> Optional[int]:
        if self.sshd is None or self.exited(self.sshd):
            return None if self.sshd is None else self.returncodes[self.sshd.pid]
        self.sshd.send_signal(signal.SIGTERM)
        code = self.wait(self.sshd, timeout=10)
        if code is None:
            self.sshd.kill()
            code = self.wait(self.sshd)
        return code
