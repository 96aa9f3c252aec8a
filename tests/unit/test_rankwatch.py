"""The launcher's rank watch (trainer/launch/rankwatch.py): which rank of a runner exited first, from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Iterator

import pytest

from llm_trainer.launch.rankwatch import ProcInfo, RankExit, RankWatch, descendants, first_failure, read_proc, returncode_of

RUNNER, OTHER = 100, 200
CMDLINES = {RUNNER: "/opt/venv/bin/python -u -m deepspeed.launcher.launch --world_info=x --node_rank=1 train.py",
            OTHER: "python3 -m llm_trainer.launch -- deepspeed"}


class FakeProc:
    """A /proc whose processes the test changes between scans."""

    def __init__(self) -> None:
        self.procs: dict[int, ProcInfo] = {}
        self.rank_env: dict[int, str] = {}

    def add(self, pid: int, ppid: int, rank: str | None) -> None:
        self.procs[pid] = ProcInfo(pid, ppid, False, None)
        if rank is not None:
            self.rank_env[pid] = rank

    def die(self, pid: int, wait_status: int) -> None:
        self.procs[pid] = ProcInfo(pid, self.procs[pid].ppid, True, wait_status)
        self.rank_env.pop(pid, None)  # a zombie's environ reads empty

    def reap(self, pid: int) -> None:
        del self.procs[pid]

    def watch(self) -> RankWatch:
        return RankWatch(list_pids=lambda: list(self.procs), read_proc=self.procs.get,
                         read_cmdline=lambda pid: CMDLINES.get(pid, ""), read_rank=self.rank_env.get)


def test_wait_status_to_returncode():
    assert returncode_of(9) == -signal.SIGKILL
    assert returncode_of(1 << 8) == 1
    assert returncode_of(0) == 0


def test_the_rank_killed_first_is_named_not_the_ones_the_runner_terminates_after():
    proc = FakeProc()
    proc.add(RUNNER, 1, None)
    proc.add(11, RUNNER, "2")
    proc.add(12, RUNNER, "3")
    proc.add(13, OTHER, "9")  # RANK in its env, but not the runner's child
    proc.add(14, 12, "3")     # a rank's own child (a DataLoader worker): not a rank
    watch = proc.watch()
    watch.scan()
    assert watch.ranks == {11: "2", 12: "3"}
    proc.die(12, signal.SIGKILL)  # zombie until the runner polls
    watch.scan()
    proc.reap(12)
    proc.die(11, signal.SIGTERM)  # the runner terminates the rest
    watch.scan()
    assert watch.first_failure() == RankExit("3", 12, -signal.SIGKILL, 2)
    assert [(e.rank, e.returncode) for e in watch.exits] == [("3", -signal.SIGKILL), ("2", -signal.SIGTERM)]


def test_a_rank_reaped_between_scans_still_counts_and_an_exit_code_beats_a_sigterm_in_the_same_scan():
    proc = FakeProc()
    proc.add(RUNNER, 1, None)
    proc.add(11, RUNNER, "0")
    proc.add(12, RUNNER, "1")
    watch = proc.watch()
    watch.scan()
    proc.die(12, 1 << 8)  # exit 1
    proc.die(11, signal.SIGTERM)
    watch.scan()
    assert watch.first_failure() == RankExit("1", 12, 1, 2)
    proc.add(21, RUNNER, "5")
    watch.scan()
    proc.reap(21)  # never seen as a zombie: its status is unknown
    watch.scan()
    assert watch.exits[-1] == RankExit("5", 21, None, 4)


def test_within_one_scan_a_rank_killed_by_a_signal_beats_a_peers_exception():
    exits = [RankExit("2", 11, 1, 4), RankExit("3", 12, -signal.SIGKILL, 4), RankExit("0", 13, -signal.SIGTERM, 4)]
    assert first_failure(exits) == RankExit("3", 12, -signal.SIGKILL, 4)
    assert first_failure([RankExit("2", 11, 1, 3), *exits]) == RankExit("2", 11, 1, 3)  # an earlier scan wins


def test_ranks_that_all_exit_0_are_no_failure():
    exits = [RankExit("0", 1, 0, 3), RankExit("1", 2, 0, 3)]
    assert first_failure(exits) is None
    assert first_failure([*exits, RankExit("1", 3, -signal.SIGTERM, 5), RankExit("2", 4, None, 5)]) == RankExit("1", 3, -signal.SIGTERM, 5)


@pytest.fixture
def parent_and_child() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A process whose one child sleeps: a runner and its rank, as the watch sees them in /proc."""
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, time; c = subprocess.Popen(['sleep', '30']); "
                               "print(c.pid, flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        yield parent, int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()


def test_descendants_are_read_from_proc_zombies_included(parent_and_child):
    """What the watch scans in the pod: the command's process tree, a killed rank still there until it is reaped."""
    parent, child = parent_and_child
    assert descendants(parent.pid) == [child]
    os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not (info := read_proc(child)) or not info.zombie:
        assert time.monotonic() < deadline, "the killed child never became a zombie"
        time.sleep(0.05)
    assert descendants(parent.pid) == [child] and returncode_of(info.wait_status or 0) == -signal.SIGKILL


def test_a_tree_watch_lists_a_known_rank_but_not_what_runs_below_it(parent_and_child):
    """RankWatch.of_tree scans the runner's children each POLL, not every thread and worker of the ranks below them."""
    parent, child = parent_and_child
    assert descendants(os.getpid(), prune=lambda pid: pid == parent.pid).count(child) == 0
    assert parent.pid in descendants(os.getpid(), prune=lambda pid: pid == parent.pid)
    assert child in descendants(os.getpid())
