"""Resume on a different data-parallel world size: DeepSpeed's universal checkpoint, made once, beside the original.

A ZeRO checkpoint holds one optimizer shard per data-parallel rank (`*zero_pp_rank_<d>_mp_rank_<m>_optim_states.pt`);
DeepSpeed refuses to load it on another number of ranks (ZeRORuntimeException). DeepSpeed's answer is the
universal checkpoint: `ds_to_universal` merges the shards into one file per parameter and optimizer state,
and an engine whose config has checkpoint.load_universal loads them on any world size.

Here: when the shards' count differs from this run's data-parallel size, global rank 0 converts
<dir>/<tag> into <dir>/<tag>/universal (in a temporary directory, renamed when complete, so a crash
half-way leaves nothing that looks usable), the other ranks wait for its outcome (a failed conversion fails every
rank with its message), and every rank loads
the universal copy. The copy lives inside the tag's directory, so it is pruned with its checkpoint, and a
later resize resumes from it without converting again. The data position is a global sample count (see
data.Sampler.load_state_dict), so no sample is seen twice or skipped under the new sharding.

Needs a checkpoint directory shared by all ranks (the ReadWriteMany volume a resize needs anyway).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

import torch.distributed as dist

from .markers import atomic_write

UNIVERSAL = "universal"
DONE = ".complete"
ZERO_SHARD = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")

log = logging.getLogger("llmtrain.universal")


def saved_data_parallel_size(tag_dir: Path) -> Optional[int]:
    """Data-parallel ranks that wrote ZeRO optimizer shards into this tag (None: no ZeRO shards, e.g. ZeRO 0)."""
    ranks = {int(m.group(1)) for p in tag_dir.iterdir() if (m := ZERO_SHARD.match(p.name))} if tag_dir.is_dir() else set()
    return max(ranks) + 1 if ranks else None


def convert(tag_dir: Path, target: Path) -> None:
    """ds_to_universal from tag_dir into target, atomically (temporary sibling, then rename)."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
           "--output_folder", str(tmp), "--num_extract_workers", "1", "--num_merge_workers", "1", "--inject_missing_state"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"converting checkpoint {tag_dir} to a universal checkpoint failed (exit {proc.returncode}):\n{tail}")
    atomic_write(tmp / DONE, "")
    shutil.rmtree(target, ignore_errors=True)  # a stale, incomplete copy (no rename ever made it complete)
    os.replace(tmp, target)


def load_resized(engine, directory: Path, tag: str, rank: int, barrier: Callable[[], None],
                 notify: Callable[[str], None]) -> Optional[tuple[Any, Any]]:
    """Load `tag` through a universal checkpoint if it was written by another data-parallel size.

    Returns DeepSpeed's (load_path, client_state), or None when the plain load applies. Called on every rank."""
    tag_dir = directory / tag
    saved = saved_data_parallel_size(tag_dir)
    if saved is None or not engine.zero_optimization():
        return None
    current = getattr(engine, "seq_dp_world_size", engine.dp_world_size)
    if saved == current:
        return None
    if getattr(engine, "is_pipe_parallel", False):
        raise RuntimeError(f"checkpoint {tag!r} was written by {saved} data-parallel ranks, this run has {current}: "
                           "resuming on another data-parallel size is not supported with training.pipelineStages > 1; "
                           f"resume on {saved} × pipelineStages ranks")
    target = tag_dir / UNIVERSAL
    message = (f"checkpoint {tag} was written by {saved} data-parallel ranks, this run has {current}: "
               f"resuming from its universal copy {target}")
    failure: Optional[str] = None
    if rank == 0 and not (target / DONE).exists():
        notify(f"converting checkpoint {tag} ({saved} data-parallel ranks) to a universal checkpoint for {current}")
        try:
            convert(tag_dir, target)
        except Exception as exc:  # every rank fails with it, rather than waiting in a barrier for the timeout
            failure = str(exc)
    outcome = [failure]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(outcome, src=0)  # the other ranks wait here while rank 0 converts
    else:
        barrier()
    if outcome[0]:
        raise RuntimeError(outcome[0])
    if not (target / DONE).exists():
        raise RuntimeError(f"universal checkpoint {target} is missing on rank {rank} (is {directory} shared by all ranks?)")
    notify(message)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)  # the torch optimizer under ZeRO's wrapper
    hyper = [{k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")} for group in inner.param_groups]
    engine._config.load_universal_checkpoint = True  # read by engine.load_checkpoint at each call
    try:
        loaded = engine.load_checkpoint(str(tag_dir), tag=UNIVERSAL)
    finally:
        engine._config.load_universal_checkpoint = False
    if engine.zero_optimization_partition_weights():
        repair_zero3_universal_load(inner, hyper)
    return loaded


def repair_zero3_universal_load(optimizer, hyper: list[dict[str, Any]]) -> None:
    """Two bugs of DeepSpeed 0.19.8's ZeRO-3 universal load (stage3.py, load_hp_checkpoint_state_from_checkpoint_dir_stage3):
    - every param group gets the hyperparameters of group 0, so norms and biases (weight decay 0) would be decayed
      like matrices: each group's own are put back (the LR stays as loaded: the schedule's, the same for all groups);
    - every group's optimizer state gets the same `step` tensor object, which torch's AdamW increments in place
      once per group and step, so the bias correction of every group after the first runs ahead: each gets its own.
    Both verified by comparing with a plain load of the same checkpoint (equal state, equal updates afterwards)."""
    for group, own in zip(optimizer.param_groups, hyper):
        group.update(own)
    for state in optimizer.state.values():
        step = state.get("step")
        if step is not None and hasattr(step, "clone"):
            state["step"] = step.clone()
