"""DeepSpeed's CPU allreduce (gloo + its shared-memory op) gives every rank a buffer in /dev/shm, tens of MB,
named deepspeed_allreduce_buffer_<uid>_<master addr>_<master port>_<rank>, and never removes it. In a pod the
memory-backed /dev/shm goes with the pod; on a machine that runs many jobs (tests, `llm-train run`) they pile up
until memory runs out. Whoever ran the ranks removes their buffers when they are done."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

SHM_DIR = Path("/dev/shm")
PREFIX = "deepspeed_allreduce_buffer"


def allreduce_buffers(master_addr: str, master_port: int | str, rank: Optional[int] = None) -> list[Path]:
    pattern = f"{PREFIX}_{os.getuid()}_{master_addr}_{master_port}_{'*' if rank is None else rank}"
    return sorted(SHM_DIR.glob(pattern)) if SHM_DIR.is_dir() else []


def release_allreduce_buffers(master_addr: Optional[str], master_port: int | str | None, rank: Optional[int] = None) -> None:
    """Unlink the buffers (of one rank, or of all): mappings still open stay valid, the memory goes with the last."""
    if not master_addr or not master_port:
        return
    for path in allreduce_buffers(master_addr, master_port, rank):
        path.unlink(missing_ok=True)
