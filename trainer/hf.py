"""Hugging Face model directories on disk: read (config.json + safetensors) and write, no transformers needed.

gpt   <-> GPT2LMHeadModel  (model_type gpt2): Conv1D weights are stored (in, out), so Linear weights are transposed.
llama <-> LlamaForCausalLM (model_type llama): same layout as nn.Linear, rotate-half RoPE, so no permutation;
          likewise Qwen2ForCausalLM, Qwen3ForCausalLM and MistralForCausalLM (families.py: their config.json keys).

Exported directories hold config.json, generation_config.json and model.safetensors (or shards plus
model.safetensors.index.json), with safetensors metadata {"format": "pt"} and tied lm_head.weight left out, as
save_pretrained writes them. bos/eos/pad_token_id are the ids the model was trained with (SpecialTokens), written
as null where there are none: transformers would otherwise fill in its own defaults (GPT-2's 50256 even for a
256-token vocabulary).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, cast

import torch
from safetensors.torch import load_file, save_file

from .families import LLAMA_LIKE, config_fields, hf_architecture_config
from .model import ModelConfig

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
SHARD_BYTES = 5 * 2**30


# ------------------------------------------------------------------------------------------- read
def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / "config.json").read_text())


def config_from_hf(hf: Mapping[str, Any], *, seq_len: Optional[int] = None,
                   activation_checkpointing: bool = False) -> ModelConfig:
    """Our ModelConfig for a HF config.json; seq_len defaults to min(context length, 1024) (gpt) / 2048 (llama)."""
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in GPT2_TANH_GELU:
            raise ValueError(f"gpt2 activation_function {act!r} is not supported (only tanh GELU: {GPT2_TANH_GELU})")
        d, positions = hf["n_embd"], hf.get("n_positions", 1024)
        seq = seq_len or min(positions, 1024)
        if seq > positions:
            raise ValueError(f"model.seqLen {seq} exceeds the checkpoint's n_positions {positions}")
        return ModelConfig(architecture="gpt", n_layers=hf["n_layer"], d_model=d, n_heads=hf["n_head"],
                           n_kv_heads=hf["n_head"], ffn_hidden=hf.get("n_inner") or 4 * d, seq_len=seq,
                           vocab_size=hf["vocab_size"], tie_embeddings=hf.get("tie_word_embeddings", True),
                           norm_eps=hf.get("layer_norm_epsilon", 1e-5), max_positions=positions if positions != seq else None,
                           activation_checkpointing=activation_checkpointing)
    if model_type in LLAMA_LIKE:
        return ModelConfig(**config_fields(model_type, hf, seq_len), activation_checkpointing=activation_checkpointing)
    raise ValueError(f"model_type: {model_type!r} is not supported (supported: gpt2, {', '.join(LLAMA_LIKE)})")


def load_hf_config(path: str | os.PathLike, *, seq_len: Optional[int] = None,
                   activation_checkpointing: bool = False) -> ModelConfig:
    """config_from_hf of a model directory; an unsupported config names the file as well as the field."""
    try:
        return config_from_hf(read_hf_config(path), seq_len=seq_len, activation_checkpointing=activation_checkpointing)
    except ValueError as exc:
        raise ValueError(f"{Path(path) / 'config.json'}: {exc}") from None


def read_hf_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name)))
    return state


def load_hf_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Copy a HF checkpoint's weights into a Decoder built with config_from_hf(...)."""
    cfg = cast(ModelConfig, model.cfg)
    ours = model.state_dict()
    loaded = {}
    for key, tensor in read_hf_state_dict(path).items():
        if cfg.architecture == "gpt":
            if key.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # old causal-mask buffers
            if not key.startswith(("transformer.", "lm_head.")):
                key = "transformer." + key  # the original gpt2 checkpoints have no prefix
            if key.endswith(GPT2_CONV1D):
                tensor = tensor.t()
        if key in ours:
            loaded[key] = tensor
    if cfg.tie_embeddings:
        loaded.pop("lm_head.weight", None)
    expected = {k for k in ours if not (cfg.tie_embeddings and k == "lm_head.weight")}
    missing, unexpected = expected - loaded.keys(), loaded.keys() - expected
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    with torch.no_grad():
        for key, tensor in loaded.items():
            if ours[key].shape != tensor.shape:
                raise ValueError(f"{path}: {key} has shape {tuple(tensor.shape)}, model expects {tuple(ours[key].shape)}")
            ours[key].copy_(tensor)


# ------------------------------------------------------------------------------------------ write
@dataclass(frozen=True)
class SpecialTokens:
    """Token ids for the exported config and generation_config.json; None: the model has none (deliberately null)."""

    bos: Optional[int] = None
    eos: Optional[int] = None
    pad: Optional[int] = None

    def as_config(self) -> dict[str, Optional[int]]:
        return {"bos_token_id": self.bos, "eos_token_id": self.eos, "pad_token_id": self.pad}


def hf_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32, tokens: SpecialTokens = SpecialTokens(),
              max_position_embeddings: Optional[int] = None) -> dict[str, Any]:
    """config.json; max_position_embeddings (llama): the source model's when fine-tuning, else seq_len. A gpt model
    keeps its source's n_positions through cfg.max_positions (the rows of its position table)."""
    return {**_architecture_config(cfg, dtype, max_position_embeddings), **tokens.as_config()}


def generation_config(tokens: SpecialTokens) -> dict[str, Any]:
    return {"_from_model_config": True, **tokens.as_config()}


def _architecture_config(cfg: ModelConfig, dtype: torch.dtype, max_position_embeddings: Optional[int]) -> dict[str, Any]:
    dtype_name = str(dtype).removeprefix("torch.")
    if cfg.architecture == "gpt":
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.max_positions or cfg.seq_len, "n_embd": cfg.d_model,
            "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.ffn_hidden,
            "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
            "scale_attn_weights": True, "use_cache": True, "tie_word_embeddings": cfg.tie_embeddings,
            "torch_dtype": dtype_name, "dtype": dtype_name,
        }
    return hf_architecture_config(cfg, dtype_name, max_position_embeddings)


def to_hf_state_dict(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in HF naming: contiguous CPU tensors, tied head left out, GPT-2 Conv1D weights transposed."""
    out = {}
    for key, tensor in state.items():
        if cfg.tie_embeddings and key == "lm_head.weight":
            continue
        tensor = tensor.detach().cpu()
        if cfg.architecture == "gpt" and key.endswith(GPT2_CONV1D):
            tensor = tensor.t()
        out[key] = tensor.contiguous().clone()
    return out


def save_hf_model(cfg: ModelConfig, state: Mapping[str, torch.Tensor], path: str | os.PathLike,
                  shard_bytes: int = SHARD_BYTES, tokens: SpecialTokens = SpecialTokens(),
                  max_position_embeddings: Optional[int] = None) -> Path:
    """Write a HF model directory (written to path.tmp-<pid>, then renamed into place)."""
    path = Path(path)
    tensors = to_hf_state_dict(cfg, state)
    dtype = next(iter(tensors.values())).dtype
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(hf_config(cfg, dtype, tokens, max_position_embeddings), indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(generation_config(tokens), indent=2) + "\n")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    if path.exists():
        import shutil
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path
