"""LoRA: low-rank adapters on frozen linear layers, laid out as PEFT lays them out.

Each targeted nn.Linear becomes a LoraLinear: the same module (its `weight` and `bias` stay where they were, so the
base's state-dict keys, the Hugging Face mapping in hf.py and load_hf_weights are untouched), plus

    lora_A  nn.Linear(in, rank, bias=False)   kaiming-uniform(a=√5), as PEFT initialises it
    lora_B  nn.Linear(rank, out, bias=False)  zeros: the adapted model starts as the base model

and forward(x) = base(x) + lora_B(lora_A(dropout(x))) · alpha / rank. Every other parameter is frozen
(requires_grad False), so the optimizer (engine.param_groups) holds state for the adapters only.

PEFT's key for an adapter is `base_model.model.<module path in transformers>.lora_A.weight`; our module paths are the
Hugging Face ones (model.py), so the adapter's keys are ours with that prefix. GPT-2's attention and MLP are Conv1D
layers in transformers; PEFT keeps lora_A/lora_B as plain Linear layers for them too (fan_in_fan_out only changes how
the base weight is merged), so the adapter tensors need no transposing.

Target names match as in PEFT (a list): the module's whole name, or its name ending in "." + target. `all-linear`:
every linear layer but the output head (PEFT excludes the output embedding too).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ALL_LINEAR = "all-linear"
OUTPUT_HEAD = "lm_head"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LORA_KEYS = (".lora_A.weight", ".lora_B.weight")
MERGED = "merged"  # export.mergeLora: <model>/merged holds the plain Hugging Face model


class LoraLinear(nn.Linear):
    """An nn.Linear whose frozen weight is adapted by lora_B · lora_A · scaling."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        nn.Module.__init__(self)  # no fresh weight: the base's parameters are adopted as they are
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        device = base.weight.device
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=device)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=device)
        self.lora_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.scaling = alpha / rank
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return self.weight + (self.lora_B.weight @ self.lora_A.weight) * self.scaling


# ------------------------------------------------------------------------------------- targets
def linear_names(model: nn.Module) -> list[str]:
    """Names of the model's linear layers, in module order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and not isinstance(module, LoraLinear)]


def matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def resolve_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Module names the targets select; ValueError naming training.lora.targetModules for a target that selects nothing."""
    names = linear_names(model)
    if list(targets) == [ALL_LINEAR]:
        return [n for n in names if n != OUTPUT_HEAD]
    if ALL_LINEAR in targets:
        raise ValueError(f"training.lora.targetModules: {ALL_LINEAR} stands alone (it selects every linear layer), got {list(targets)}")
    unmatched = [t for t in targets if not any(matches(n, t) for n in names)]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ValueError(f"training.lora.targetModules: {', '.join(map(repr, unmatched))} matches no linear layer of the model "
                         f"(its linear layers are named {', '.join(leaves)}; or use {ALL_LINEAR})")
    return [n for n in names if any(matches(n, t) for t in targets)]


def check_targets(cfg, targets: Sequence[str]) -> list[str]:
    """The targets against the model cfg describes, built on the meta device (no weights): for pre-flight checks."""
    from .model import Decoder

    with torch.device("meta"):
        model = Decoder(cfg)
    selected = resolve_targets(model, targets)
    if cfg.tie_embeddings and OUTPUT_HEAD in selected:
        raise ValueError(f"training.lora.targetModules: {OUTPUT_HEAD} shares its weight with the token embedding "
                         "(tieEmbeddings): an adapter on it cannot be merged; leave it out")
    return selected


def apply_lora(model: nn.Module, lora, seed: int) -> list[str]:
    """Freeze the model and put adapters on the targeted layers (in place; deterministic in seed: equal on every rank)."""
    selected = resolve_targets(model, lora.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in selected:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoraLinear(getattr(parent, child), lora.rank, lora.alpha, lora.dropout))
    return selected


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -------------------------------------------------------------------------------------- export
def split_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base weights, adapter weights) of a state dict of a model with adapters."""
    base = {k: v for k, v in state.items() if not k.endswith(LORA_KEYS)}
    adapters = {k: v for k, v in state.items() if k.endswith(LORA_KEYS)}
    return base, adapters


def merged_state(state: Mapping[str, torch.Tensor], lora) -> dict[str, torch.Tensor]:
    """The base weights with every adapter merged in: W + B·A·alpha/rank (in fp32, cast back to W's dtype)."""
    base, adapters = split_state(state)
    scaling = lora.alpha / lora.rank
    out = dict(base)
    for key in adapters:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        a, b, w = adapters[key].float(), adapters[module + ".lora_B.weight"].float(), base[module + ".weight"]
        out[module + ".weight"] = (w.float() + (b @ a) * scaling).to(w.dtype)
    return out


def peft_config(lora, selected: Iterable[str], base_model: Optional[str], architecture: str) -> dict[str, Any]:
    """adapter_config.json. target_modules: the user's names (PEFT matches them the same way), or for all-linear the
    leaf names it selected here."""
    targets = sorted({n.rsplit(".", 1)[-1] for n in selected}) if list(lora.target_modules) == [ALL_LINEAR] else list(lora.target_modules)
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "target_modules": targets,
        "bias": "none", "fan_in_fan_out": architecture == "gpt",  # transformers' GPT-2 uses Conv1D (weights stored in × out)
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
    }


def save_adapter(state: Mapping[str, torch.Tensor], path: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """A PEFT adapter directory: adapter_config.json and adapter_model.safetensors (PEFT's key names)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _, adapters = split_state(state)
    if not adapters:
        raise ValueError("the model holds no LoRA adapters to export")
    tensors = {PEFT_PREFIX + k: v.detach().cpu().contiguous().clone() for k, v in adapters.items()}
    save_file(tensors, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (path / ADAPTER_CONFIG).write_text(json.dumps(dict(config), indent=2) + "\n")
    return path


def export_adapter(cfg, state: Mapping[str, torch.Tensor], path: str | os.PathLike, lora, selected: Sequence[str], *,
                   base_model: Optional[str], merge: bool, **hf_options: Any) -> Path:
    """The export of a LoRA run: the PEFT adapter at path and, with merge, the merged model at path/merged (written to
    path.tmp-<pid>, then renamed into place, like hf.save_hf_model)."""
    import shutil

    from .hf import save_hf_model

    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    base_name = os.path.abspath(base_model) if base_model else None
    save_adapter(state, tmp, peft_config(lora, selected, base_name, cfg.architecture))
    if merge:
        save_hf_model(cfg, merged_state(state, lora), tmp / MERGED, **hf_options)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path
