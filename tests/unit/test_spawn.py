"""hack/lib/spawn.sh: the hack scripts' way to start a component (etcd, the API server, Kueue, kubelet...)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SPAWN = Path(__file__).resolve().parents[2] / "hack" / "lib" / "spawn.sh"


def spawn(tmp_path: Path, *command: str) -> tuple[int, float]:
    """Run spawn; returns the pid it wrote and the seconds it took."""
    started = time.monotonic()
    subprocess.run(["bash", "-c", f'source "{SPAWN}"; spawn "$@"', "spawn", str(tmp_path / "pid"), str(tmp_path / "log"), *command],
                   check=True, timeout=30)
    return int((tmp_path / "pid").read_text()), time.monotonic() - started


def test_spawn_returns_once_the_pid_is_the_command_not_the_shell_that_wrote_it(tmp_path):
    """The pid file is written before the exec; a liveness check run right after spawn (Kueue's, matching the binary's
    path) must see the binary. Kueue's start did not wait for the exec, and CI reported it "exited" while it ran."""
    sleep = shutil.which("sleep")
    assert sleep
    for _ in range(5):
        pid, _ = spawn(tmp_path, sleep, "30")
        try:
            assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [sleep.encode(), b"30"]
            assert os.getsid(pid) == pid  # its own session: the caller's Ctrl-C or exit does not reach it
        finally:
            os.kill(pid, signal.SIGKILL)


def test_spawn_returns_at_once_when_the_command_ends_and_keeps_its_output(tmp_path):
    pid, took = spawn(tmp_path, shutil.which("sh") or "/bin/sh", "-c", "echo cannot bind 127.0.0.1:8443 >&2; exit 3")
    assert took < 5  # not the 10 s it allows for an exec
    assert (tmp_path / "log").read_text() == "cannot bind 127.0.0.1:8443\n"
