"""The output directory of `llm-train run`: which run it holds, whether a manifest may continue it, --fresh.

    <output-dir>/run.json    {"job", "manifest", "resume_key"}: the run its checkpoints belong to (written at launch)
    <output-dir>/train.log   what DeepSpeed's launcher and the ranks printed, appended run after run

A directory with a checkpoint is continued (resumed, or reported complete) only by the same job with the same
resume key: the fields that decide what a checkpoint holds (model, precision, ZeRO stage and offload, the
optimizer settings its state carries: learning rate, weight decay, Adam betas) or what its data position means
(batch plan, seed, data, DeepSpeed overrides). Anything else may change between runs: more steps (training
continues), the shape of the LR schedule, logging, checkpoint interval and keep, monitoring, pod-only fields.
The rank count may change too (`--ranks`): the trainer resumes on another data-parallel size through a universal
checkpoint (universal.py), except with pipeline stages, where the key holds the ranks and the stage count.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from llm_operator.api.v1alpha1 import SFT_FORMATS, LLMTrainingJobSpec

from .markers import PROGRESS

RUN_RECORD = "run.json"
LOG = "train.log"
LOCK = ".llm-train.lock"
# The worker's files; the names are repeated here because importing worker or checkpoint pulls in torch
# (seconds), and `llm-train run` answers "already complete" or "refused" without it.
SUMMARY = "summary.json"  # worker.SUMMARY
CHECKPOINTS = "checkpoints"  # the worker's default --checkpoint-dir, which `llm-train run` uses
LATEST = "latest"  # checkpoint.LATEST
MARKERS = "markers"  # markers.marker_dir() without LLMTRAIN_MARKER_DIR, which `llm-train run` unsets
# What --fresh removes: the earlier run's state. data-cache/ stays (tokenized data, keyed by its content).
RUN_STATE = (CHECKPOINTS, MARKERS, "model", SUMMARY, PROGRESS, RUN_RECORD, LOG)

FRESH_HINT = "Pass --fresh to discard that run and train from scratch, or choose another --output-dir."
_UNSET = object()
RANKS = "ranks (nodes × slotsPerNode, or --ranks)"

TRAINING_FIELDS = {"micro_batch_size", "precision", "zero_stage", "offload", "learning_rate", "weight_decay",
                   "adam_beta1", "adam_beta2", "seed"}
DATA_FIELDS = {"format", "paths", "token_dtype", "tokenizer", "text_field"}


class Refused(Exception):
    """The output directory holds a run that this invocation must not continue or touch."""


def resume_key(spec: LLMTrainingJobSpec, ranks: int) -> dict[str, Any]:
    """Manifest field (dotted, as written in the YAML) -> value, for every field a checkpoint depends on."""
    m = spec.model_spec
    model = {"huggingFacePath": m.hugging_face_path, "seqLen": m.seq_len} if m.hugging_face_path else m.resolved()
    _, _, global_batch = spec.batch_plan()  # --ranks keeps the global batch (worker.fit_to_world)
    # The trainer resumes on another data-parallel size (universal.py) but not a pipelined run (load_resized refuses it)
    pipelined = {RANKS: ranks, "training.pipelineStages": spec.training.pipeline_stages} \
        if spec.training.pipeline_stages > 1 else {}
    key = {**pipelined, **_flat("model", model),
           **_flat("training", spec.training.model_dump(by_alias=True, include=TRAINING_FIELDS)),
           "training.globalBatchSize": global_batch,
           **_flat("data", spec.data.model_dump(by_alias=True, include=DATA_FIELDS)),
           **_flat("deepspeed.config", spec.deepspeed.config)}
    validation = spec.data.validation
    if validation is not None and validation.fraction is not None:  # it cuts windows out of the training set
        key["data.validation.fraction"] = validation.fraction
    if spec.data.format in SFT_FORMATS:  # they make the rows and their targets (absent from other runs' keys)
        key["data.packing"] = spec.data.packing
        key["training.lossOn"] = spec.training.loss_on or "assistant"
    return json.loads(json.dumps(key))  # as it reads back from run.json


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for name, sub in value.items() for k, v in _flat(f"{prefix}.{name}", sub).items()}
    return {prefix: value}


def has_checkpoint(out: Path) -> bool:
    return (out / CHECKPOINTS / LATEST).is_file()


def read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def check_continuable(out: Path, job: str, key: dict[str, Any]) -> None:
    """Raise Refused if `out` holds a checkpoint of another job, or of this job under a different resume key."""
    if not has_checkpoint(out):
        return  # nothing to continue: the directory is free for a new run
    record = read_json(out / RUN_RECORD)
    if record is None:  # written by the pods or before run.json existed: the summary may still name the job
        other = (read_json(out / SUMMARY) or {}).get("job")
        if other not in (None, job):
            raise Refused(f"{out} holds a run of job {other!r}, not {job!r}.\n{FRESH_HINT}")
        return
    if record.get("job") != job:
        raise Refused(f"{out} holds a run of job {record.get('job')!r} ({record.get('manifest')}), not {job!r}.\n"
                      + FRESH_HINT)
    old = record.get("resume_key", {})
    if RANKS not in key:  # written before the rank count left the key of an unpipelined run
        old.pop(RANKS, None)
    changed = [f"  {name}: {_show(old, name)} → {_show(key, name)}"
               for name in sorted(old.keys() | key.keys()) if old.get(name, _UNSET) != key.get(name, _UNSET)]
    if changed:
        raise Refused(f"{out} holds a run of {job} whose checkpoint does not fit this manifest; changed:\n"
                      + "\n".join(changed) + "\n" + FRESH_HINT)


def _show(key: dict[str, Any], name: str) -> str:
    return json.dumps(key[name]) if name in key else "(unset)"


def write_record(out: Path, job: str, manifest: Path, key: dict[str, Any]) -> None:
    (out / RUN_RECORD).write_text(json.dumps({"job": job, "manifest": str(manifest), "resume_key": key}, indent=1) + "\n")


def losses(out: Path) -> tuple[Optional[float], Optional[float]]:
    """(first, last) logged loss of the whole run, across resumes."""
    summary = read_json(out / SUMMARY) or {}
    last = summary.get("final_loss")
    if last is None:  # a process that resumed at the end trained nothing; progress.json has the last logged loss
        last = (read_json(out / PROGRESS) or {}).get("loss")
    return summary.get("initial_loss"), last


def lock(out: Path) -> int:
    """Hold an exclusive lock on the directory for this process's lifetime (returns the descriptor)."""
    fd = os.open(out / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Refused(f"another llm-train run is using {out}") from None
    return fd


def clear(out: Path) -> list[str]:
    """--fresh: remove the earlier run's state (only the names in RUN_STATE); returns what was removed."""
    removed = []
    for name in RUN_STATE:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed
