"""The global gradient norm where DeepSpeed does not report one.

DeepSpeed's ZeRO optimizers (and its bf16/fp16 wrappers) keep the norm they clip with; with ZeRO stage 0 in
fp32 the plain torch optimizer keeps none and engine.get_global_grad_norm() stays None. There the norm is taken
from the module's gradients after the last backward of the step: DeepSpeed has all-reduced them at the
accumulation boundary, so every rank computes the same global norm, before clipping, as the metric means.
"""

from __future__ import annotations

from typing import Optional

import torch


def module_grad_norm(module: torch.nn.Module) -> Optional[torch.Tensor]:
    """L2 norm of every parameter gradient as a 0-dim tensor (no host sync); None when no parameter has one."""
    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
