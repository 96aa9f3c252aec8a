"""The Llama-like Hugging Face families: which config.json keys mean what, and which features we refuse.

All four are the same decoder (RMSNorm, RoPE rotate-half, SwiGLU, grouped-query attention, HF module names) with:
  llama    LlamaForCausalLM    no biases; optional llama3 RoPE scaling
  qwen2    Qwen2ForCausalLM    bias on q/k/v (not o); Qwen2 and Qwen2.5 checkpoints
  qwen3    Qwen3ForCausalLM    per-head RMSNorm on q and k before RoPE (q_norm / k_norm), explicit head_dim
  mistral  MistralForCausalLM  sliding-window attention on every layer when config.json sets sliding_window
An explicit head_dim (Qwen3, Mistral-Nemo, Llama 3.2 3B) is honoured by every family, as transformers does.

Errors name the config.json field; the caller adds the file (hf.load_hf_config, preflight).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

LLAMA_LIKE = ("llama", "qwen2", "qwen3", "mistral")
HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                    "mistral": "MistralForCausalLM"}
ROPE_TYPES = ("default", "llama3")


QKV_BIAS = ("qwen2",)  # the families whose q/k/v projections always have a bias (ModelConfig.qkv_bias)
QK_NORM = ("qwen3",)  # ... whose q and k are RMS-normalised per head (ModelConfig.qk_norm)


def _refuse(field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{field}: {value!r} is not supported ({why})")


def _check_features(family: str, hf: Mapping[str, Any]) -> None:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise _refuse("hidden_act", act, "only silu (SwiGLU)")
    # qwen2 always has its q/k/v bias and no other; the others have attention_bias (q, k, v and o) and llama mlp_bias
    if family != "qwen2" and hf.get("attention_bias"):
        raise _refuse("attention_bias", hf["attention_bias"], f"{family} without attention biases only")
    if hf.get("mlp_bias"):
        raise _refuse("mlp_bias", hf["mlp_bias"], "MLP without biases only")
    # qwen2/qwen3: the window applies to layers from max_window_layers on, when use_sliding_window is set
    if family in ("qwen2", "qwen3") and hf.get("use_sliding_window"):
        raise _refuse("use_sliding_window", hf["use_sliding_window"],
                      f"{family} with sliding-window layers is not implemented; full attention only")
    sliding_layers = [t for t in hf.get("layer_types") or [] if t != "full_attention"]
    if family != "mistral" and sliding_layers:
        raise _refuse("layer_types", sliding_layers[0], "full_attention only")


def _rope(hf: Mapping[str, Any]) -> tuple[float, Optional[dict]]:
    """rope_theta and the llama3 scaling parameters (None: plain RoPE); transformers 5 writes rope_parameters."""
    field = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    rope = dict(hf.get(field) or {})
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise _refuse(f"{field}.rope_type", rope_type, f"only {', '.join(ROPE_TYPES)}")
    return float(theta), (rope if rope_type == "llama3" else None)


def config_fields(family: str, hf: Mapping[str, Any], seq_len: Optional[int]) -> dict[str, Any]:
    """ModelConfig keyword arguments for a llama-like config.json."""
    _check_features(family, hf)
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d // heads
    if head_dim % 2:
        raise _refuse("head_dim", head_dim, "RoPE needs an even head size")
    window = hf.get("sliding_window") if family == "mistral" else None
    theta, scaling = _rope(hf)
    return dict(architecture=family, n_layers=hf["num_hidden_layers"], d_model=d, n_heads=heads,
                n_kv_heads=hf.get("num_key_value_heads") or heads, ffn_hidden=hf["intermediate_size"],
                seq_len=seq_len or min(hf.get("max_position_embeddings", 2048), 2048), vocab_size=hf["vocab_size"],
                tie_embeddings=bool(hf.get("tie_word_embeddings", False)), norm_eps=hf.get("rms_norm_eps", 1e-6),
                rope_theta=theta, rope_scaling=scaling, head_dim_override=head_dim if head_dim != d // heads else None,
                sliding_window=window, qkv_bias=family in QKV_BIAS, qk_norm=family in QK_NORM)


def hf_architecture_config(cfg: Any, dtype_name: str, max_position_embeddings: Optional[int]) -> dict[str, Any]:
    """config.json of a llama-like ModelConfig (the keys transformers 4.4x and 5 read)."""
    scaling = {k: v for k, v in (cfg.rope_scaling or {}).items() if k not in ("rope_theta", "type", "rope_type")}
    if scaling:
        scaling["rope_type"] = "llama3"
    family = cfg.architecture
    out: dict[str, Any] = {
        "architectures": [HF_ARCHITECTURES[family]], "model_type": family,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": max(max_position_embeddings or 0, cfg.seq_len), "rms_norm_eps": cfg.norm_eps,
        # transformers < 5 reads rope_theta / rope_scaling, transformers >= 5 reads rope_parameters
        "rope_theta": cfg.rope_theta, "rope_scaling": scaling or None,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default", **scaling},
        "initializer_range": 0.02, "tie_word_embeddings": cfg.tie_embeddings, "use_cache": True,
        "torch_dtype": dtype_name, "dtype": dtype_name,
    }
    if family == "llama":
        out.update(attention_bias=False, mlp_bias=False)
    elif family == "qwen3":
        out.update(attention_bias=False, use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    elif family == "qwen2":
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    elif family == "mistral":
        out.update(sliding_window=cfg.sliding_window)
    return out
