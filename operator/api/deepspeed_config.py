"""The DeepSpeed config derived from an LLMTrainingJobSpec.

Pure (no DeepSpeed import): the operator renders it into the job's ConfigMap (`ds_config.json`) and
the trainer builds the same dict when it runs without one. Everything that changed defaults between
DeepSpeed releases (gradient clipping, precision, ZeRO stage) is written out explicitly.

Optimizer: without offload the trainer builds it (torch AdamW, `fused=True` on GPU: one kernel over all
parameters, no JIT-compiled DeepSpeed op needed) and the config has no "optimizer" section. With ZeRO
optimizer offload the config names AdamW and DeepSpeed builds DeepSpeedCPUAdam, the fast
SIMD CPU implementation the offload path is designed around.

bf16: ZeRO 0–2 without offload use DeepSpeed's `torch_autocast` (fp32 parameters, bf16 matmuls; faster
than bf16 parameters in ../shared/bench measurements); ZeRO 3 and offload use bf16 parameters with fp32
master weights, which halves parameter memory where memory is the point.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from .v1alpha1 import LLMTrainingJobSpec

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
ADAM_EPS = 1e-8
STEPS_PER_PRINT = 10**9  # DeepSpeed's own progress lines: never (the trainer logs JSON itself)


def _offload(device: str, nvme_path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"device": device, "pin_memory": True}
    if device == "nvme":
        out["nvme_path"] = nvme_path
    return out


def _precision(spec: LLMTrainingJobSpec) -> dict[str, Any]:
    t = spec.training
    if t.precision == "fp16":
        # loss_scale 0 = dynamic loss scaling
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                         "hysteresis": 2, "min_loss_scale": 1}, "bf16": {"enabled": False}}
    if t.precision == "bf16":
        offload = t.offload.optimizer != "none" or t.offload.parameters != "none"
        if t.zero_stage == 3 or offload:
            return {"bf16": {"enabled": True}, "fp16": {"enabled": False}}
        return {"torch_autocast": {"enabled": True, "dtype": "bfloat16"},
                "bf16": {"enabled": False}, "fp16": {"enabled": False}}
    return {"bf16": {"enabled": False}, "fp16": {"enabled": False}}


def _zero(spec: LLMTrainingJobSpec) -> dict[str, Any]:
    t = spec.training
    zero: dict[str, Any] = {"stage": t.zero_stage}
    if t.zero_stage >= 2:
        zero.update(overlap_comm=True, contiguous_gradients=True)
    if t.zero_stage == 3:
        # export of the final model needs the full weights gathered on save
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if t.offload.optimizer != "none":
        zero["offload_optimizer"] = _offload(t.offload.optimizer, t.offload.nvme_path)
    if t.offload.parameters != "none":
        zero["offload_param"] = _offload(t.offload.parameters, t.offload.nvme_path)
    return zero


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of base with override merged in: mappings recursively, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_deepspeed_config(spec: LLMTrainingJobSpec) -> dict[str, Any]:
    """The DeepSpeed config for a spec, with spec.deepspeed.config merged last.

    Raises ValueError naming spec.deepspeed.config.<key> when the override contradicts the batch plan.
    """
    micro, accumulation, global_batch = spec.batch_plan()
    t = spec.training
    config: dict[str, Any] = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": float(t.gradient_clipping),
        **_precision(spec),
        "zero_optimization": _zero(spec),
        # the trainer's client optimizer (torch AdamW) is not on DeepSpeed's tested list
        "zero_allow_untested_optimizer": True,
        "steps_per_print": STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
    }
    if t.offload.optimizer != "none":
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": t.learning_rate, "betas": [t.adam_beta1, t.adam_beta2], "eps": ADAM_EPS,
                       "weight_decay": t.weight_decay},
        }
    override = spec.deepspeed.config
    for key in BATCH_KEYS:
        if key in override and override[key] != config[key]:
            raise ValueError(
                f"spec.deepspeed.config.{key} ({override[key]!r}) contradicts {config[key]} derived from "
                f"spec.training (microBatchSize, globalBatchSize) and nodes × slotsPerNode; set it there instead"
            )
    return deep_merge(config, override)
