"""Checkpoints: DeepSpeed engine state plus our client state, committed atomically, pruned, resumed.

Layout under the checkpoint directory (shared by all ranks: a ReadWriteMany volume in the cluster):

    global_step<N>/            DeepSpeed's files for tag global_step<N> (model, ZeRO partitions, client state)
    global_step<N>/.complete   written by rank 0 after every rank finished writing that tag
    latest                     the newest complete tag, replaced atomically (os.replace) after .complete

DeepSpeed would write `latest` itself before the tag is known complete on every rank, so saves pass
save_latest=False and the commit happens here, after DeepSpeed's closing barrier. A save killed half-way
leaves a tag directory without .complete that `latest` never pointed to; it is deleted at the next start.

Preemption: SIGTERM (and SIGINT) only set a flag. Ranks agree on it through a small asynchronous all-reduce on a
gloo group, so they all stop after the same step, save, and exit 0 with a `preempted.json` marker.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any, Optional

import torch

from .markers import atomic_write  # noqa: F401 (part of this module's API)

LATEST = "latest"
COMPLETE = ".complete"
TAG_RE = re.compile(r"^global_step(\d+)$")
CLIENT_KEY = "llmtrain"  # our client state lives under one key: no collision with DeepSpeed's reserved keys
# test hook: every rank exits with this code after DeepSpeed wrote step N's files, before the commit
CRASH_BEFORE_COMMIT_ENV = "LLMTRAIN_TEST_CRASH_BEFORE_COMMIT"
CRASH_EXIT_CODE = 17


def tag_for(step: int) -> str:
    return f"global_step{step}"


def step_of(tag: str) -> Optional[int]:
    m = TAG_RE.match(tag)
    return int(m.group(1)) if m else None


class CheckpointManager:
    """Save / commit / prune / resume. Every method is called on every rank (they contain collectives)."""

    def __init__(self, directory: str | os.PathLike, keep: int, rank: int, barrier, local_rank: Optional[int] = None):
        self.dir, self.keep, self.rank, self.barrier = Path(directory), keep, rank, barrier
        # Local rank 0 of every node commits and prunes too: with a per-node (unshared) checkpoint
        # directory, node k's shards are otherwise never pruned and fill its disk. On a shared
        # directory the nodes write the same files atomically, which is harmless.
        self.commits = (rank if local_rank is None else local_rank) == 0

    # ------------------------------------------------------------------ listing (no collectives)
    def latest(self) -> Optional[str]:
        try:
            return (self.dir / LATEST).read_text().strip() or None
        except FileNotFoundError:
            return None

    def is_complete(self, tag: str) -> bool:
        return (self.dir / tag / COMPLETE).exists()

    def complete_tags(self) -> list[str]:
        """Complete global_step tags, oldest first."""
        if not self.dir.is_dir():
            return []
        tags = [p.name for p in self.dir.iterdir() if step_of(p.name) is not None and self.is_complete(p.name)]
        return sorted(tags, key=lambda tag: step_of(tag) or 0)  # every tag here has a step

    # ------------------------------------------------------------------------------ lifecycle
    def resolve(self, resume: str) -> Optional[str]:
        """The tag to resume from: None (fresh start) for 'none' or 'latest' without a checkpoint."""
        if resume == "none":
            return None
        if resume == "latest":
            return self.latest()
        if not (self.dir / resume).is_dir():
            raise FileNotFoundError(f"checkpoint.resume: no checkpoint {resume!r} in {self.dir}")
        return resume

    def remove_incomplete(self) -> None:
        """Each node deletes tag directories a crash left half-written (no .complete, not `latest`)."""
        if self.commits and self.dir.is_dir():
            latest = self.latest()
            for p in self.dir.iterdir():
                if step_of(p.name) is not None and p.is_dir() and not self.is_complete(p.name) and p.name != latest:
                    shutil.rmtree(p, ignore_errors=True)
        self.barrier()

    def save(self, engine, step: int, client_state: dict[str, Any], protect: tuple[str, ...] = ()) -> str:
        """protect: tags kept whatever their age (the best evaluation's checkpoint)."""
        tag = tag_for(step)
        engine.save_checkpoint(str(self.dir), tag=tag, client_state={CLIENT_KEY: client_state}, save_latest=False)
        # save_checkpoint ends with a barrier: every rank has written (and closed) its files
        if os.environ.get(CRASH_BEFORE_COMMIT_ENV) == str(step):
            os._exit(CRASH_EXIT_CODE)
        if self.commits:  # save_checkpoint's barrier: every rank of every node has written this tag
            atomic_write(self.dir / tag / COMPLETE, f"{step}\n")
            atomic_write(self.dir / LATEST, tag)
            self.prune(protect=(tag, *protect))
        self.barrier()
        return tag

    def prune(self, protect: tuple[str, ...]) -> None:
        """Keep the newest `keep` complete checkpoints besides the protected ones (the one just committed, the best)."""
        tags = self.complete_tags()
        kept = set(tags[-self.keep:]) | set(protect)
        for tag in tags:
            if tag not in kept:
                shutil.rmtree(self.dir / tag, ignore_errors=True)

    def load(self, engine, tag: str, notify=lambda message: None) -> dict[str, Any]:
        """Through a universal checkpoint when the data-parallel size changed (universal.py)."""
        from .universal import load_resized

        loaded = load_resized(engine, self.dir, tag, self.rank, self.barrier, notify)
        path, client_state = loaded if loaded is not None else engine.load_checkpoint(str(self.dir), tag=tag)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {tag!r} from {self.dir}")
        return (client_state or {}).get(CLIENT_KEY, {})


class Preemption:
    """SIGTERM/SIGINT set a flag; `should_stop()` (called once per step on every rank) returns the
    decision all ranks agreed on one step earlier, via an async MAX all-reduce on a gloo group
    (no GPU synchronization, its latency hidden behind a training step)."""

    def __init__(self, group=None, signals=(signal.SIGTERM, signal.SIGINT)):
        self.requested: Optional[str] = None
        self.group = group
        self._work = None
        self._buf = torch.zeros(1, dtype=torch.int32)
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.requested = signal.Signals(signum).name

    def should_stop(self) -> bool:
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_world_size() == 1:
            return self.requested is not None
        decided = False
        if self._work is not None:
            self._work.wait()
            decided = bool(self._buf.item())
        self._buf = torch.tensor([int(self.requested is not None)], dtype=torch.int32)
        self._work = dist.all_reduce(self._buf, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return decided

    def drain(self) -> None:
        """Complete the outstanding all-reduce (before the final save and shutdown)."""
        if self._work is not None:
            self._work.wait()
            self._work = None
