"""Distributed setup, optimizer, LR schedule and the DeepSpeed engine.

CPU ranks (accelerator cpu, tests, smoke runs) need DS_ACCELERATOR=cpu before deepspeed is imported and use
gloo; GPU ranks use NCCL. The optimizer is torch AdamW (fused on GPU) unless the DeepSpeed config names one
(ZeRO-Offload: DeepSpeedCPUAdam). The LR schedule is a LambdaLR that DeepSpeed steps after each optimizer step
and saves in its checkpoints.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

ADAM_EPS = 1e-8


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_node_main(self) -> bool:
        return self.local_rank == 0


def use_cpu_accelerator() -> None:
    """Must run before the first `import deepspeed` in the process."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def init_distributed(accelerator: str) -> Dist:
    """torch.distributed from the launcher's env (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
    if accelerator == "cpu":
        use_cpu_accelerator()
    import deepspeed

    env = os.environ
    env.setdefault("RANK", "0")
    env.setdefault("WORLD_SIZE", "1")
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    local_rank = int(env["LOCAL_RANK"])
    if accelerator == "cpu":
        device = torch.device("cpu")
        deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    else:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        deepspeed.init_distributed(dist_backend="nccl", verbose=False)
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)


def lr_lambda(steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak LR for optimizer step s (0-based): linear warmup to 1 over warmup_steps,
    then cosine / linear decay to min_ratio at the last step, or constant."""

    def multiplier(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup_steps) / max(1, steps - 1 - warmup_steps))
        decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
        return min_ratio + (1.0 - min_ratio) * decay

    return multiplier


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (linear weights, embeddings), none on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, training, device: torch.device) -> torch.optim.Optimizer:
    """torch AdamW: fused (one multi-tensor CUDA kernel) on GPU, foreach on CPU."""
    return torch.optim.AdamW(param_groups(model, training.weight_decay), lr=training.learning_rate,
                             betas=(training.adam_beta1, training.adam_beta2), eps=ADAM_EPS,
                             fused=device.type == "cuda")


def build_engine(model: torch.nn.Module, ds_config: dict[str, Any], training, dist: Dist):
    """deepspeed.initialize with our optimizer and LambdaLR (unless the config brings its own), then
    engine.compile() on GPU when training.compile. Returns (engine, lr_scheduler)."""
    import deepspeed
    from torch.optim.lr_scheduler import LambdaLR

    own_optimizer = "optimizer" not in ds_config
    schedule = lr_lambda(training.steps, training.warmup_steps, training.schedule, training.min_learning_rate_ratio)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=build_optimizer(model, training, dist.device) if own_optimizer else None,
        model_parameters=None if own_optimizer else param_groups(model, training.weight_decay),
        lr_scheduler=None if "scheduler" in ds_config else (lambda opt: LambdaLR(opt, schedule)),
        config=ds_config,
    )
    if training.compile and dist.device.type == "cuda":
        engine.compile()
    return engine, scheduler
