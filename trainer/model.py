"""GPT-2-style and Llama-style decoders, built from ModelSpec.resolved().

gpt:   LayerNorm, tanh-GELU MLP, learned positions, biases, tied embedding (HF GPT2LMHeadModel).
llama: RMSNorm, RoPE (rotate-half), SwiGLU MLP, grouped-query attention, no biases (HF LlamaForCausalLM);
       qwen2, qwen3 and mistral are this decoder with q/k/v bias, q/k norm or a sliding window (families.py).

Module names follow the Hugging Face layouts so that hf.py maps weights one to one.
Attention is F.scaled_dot_product_attention(is_causal=True) (flash / memory-efficient kernels on GPU), or with an
attn_mask (packed SFT rows: block-diagonal causal, trainer/sft/packing.py) and position_ids restarting per example.
forward(idx, targets) returns the mean cross-entropy in fp32 over the targets that are not -100 (reduction="sum":
their sum, for a token mean across micro-batches); forward(idx) returns the logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .families import LLAMA_LIKE, QK_NORM, QKV_BIAS


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # gpt | llama | qwen2 | qwen3 | mistral (families.LLAMA_LIKE: the llama decoder)
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int
    seq_len: int
    vocab_size: int
    tie_embeddings: bool
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # llama3 frequency scaling (factor, low/high_freq_factor, original_max_position_embeddings)
    max_positions: Optional[int] = None  # gpt: rows of the position table (>= seq_len); default seq_len
    activation_checkpointing: bool = False
    head_dim_override: Optional[int] = None  # an explicit head_dim != d_model / n_heads (Qwen3, Mistral-Nemo)
    qkv_bias: bool = False  # qwen2
    qk_norm: bool = False  # qwen3: RMSNorm over each head of q and k, before RoPE
    sliding_window: Optional[int] = None  # mistral: each query sees itself and the window - 1 keys before it

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.d_model // self.n_heads

    @classmethod
    def from_resolved(cls, r: Mapping[str, Any], activation_checkpointing: bool = False) -> "ModelConfig":
        """From ModelSpec.resolved() (camelCase keys); presets of the HF families also carry headDim, ropeTheta, normEps."""
        head_dim = r.get("headDim")
        return cls(architecture=r["architecture"], n_layers=r["nLayers"], d_model=r["dModel"], n_heads=r["nHeads"],
                   n_kv_heads=r["nKvHeads"], ffn_hidden=r["ffnHidden"], seq_len=r["seqLen"], vocab_size=r["vocabSize"],
                   tie_embeddings=r["tieEmbeddings"], activation_checkpointing=activation_checkpointing,
                   norm_eps=r.get("normEps", 1e-5), rope_theta=r.get("ropeTheta", 10000.0),
                   head_dim_override=head_dim if head_dim and head_dim != r["dModel"] // r["nHeads"] else None,
                   qkv_bias=r["architecture"] in QKV_BIAS, qk_norm=r["architecture"] in QK_NORM)

    def replace(self, **changes: Any) -> "ModelConfig":
        return type(self)(**{f.name: changes.get(f.name, getattr(self, f.name)) for f in fields(self)})


# ----------------------------------------------------------------------------------------- blocks
class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # fp32 statistics, as in HF LlamaRMSNorm
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (seq_len, head_dim), HF rotate-half layout (frequencies repeated twice)."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device, dtype=torch.float32) / cfg.head_dim))
    if cfg.rope_scaling:  # Llama 3.x: slow down low frequencies, keep high ones, interpolate between
        s = cfg.rope_scaling
        factor, low, high, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = ((old / wavelen - low) / (high - low)).clamp(0, 1)
        inv = torch.where(wavelen > old / low, inv / factor, torch.where(wavelen < old / high, inv, (1 - smooth) * inv / factor + smooth * inv))
    angles = torch.outer(torch.arange(cfg.seq_len, device=device, dtype=torch.float32), inv)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class GPTAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class GPTMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.ffn_hidden)
        self.c_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = GPTAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = GPTMLP(cfg)

    def forward(self, x: torch.Tensor, rope=None, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.qk_norm, self.sliding_window = cfg.qk_norm, cfg.sliding_window
        if cfg.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps), RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, T, _ = x.shape
        # heads as -1: under tensor parallelism (AutoTP) each rank holds a slice of the heads
        q = self.q_proj(x).view(B, T, -1, self.head_dim)
        k = self.k_proj(x).view(B, T, -1, self.head_dim)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        cos, sin = rope[0][..., :T, :], rope[1][..., :T, :]  # the tables, or (B, 1, T, head_dim) at given positions
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, **causal_mask(T, self.sliding_window, x.device, attn_mask),
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


def causal_mask(T: int, window: Optional[int], device, attn_mask: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """SDPA arguments: is_causal (kernels skip the masked half), or a boolean mask: the given one (packed rows'
    block-diagonal causal mask), cut to a band where a sliding window is shorter than T."""
    if not window or window >= T:
        return {"attn_mask": attn_mask, "is_causal": False} if attn_mask is not None else {"is_causal": True}
    distance = torch.arange(T, device=device)[:, None] - torch.arange(T, device=device)[None, :]
    band = (distance >= 0) & (distance < window)
    return {"attn_mask": band if attn_mask is None else attn_mask & band}


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x: torch.Tensor, rope, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, attn_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


# ---------------------------------------------------------------------------------------- decoder
class Decoder(nn.Module):
    """Either architecture; parameters live under `transformer.` (gpt) or `model.` (llama), plus `lm_head`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.architecture == "gpt":
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.d_model),
                wpe=nn.Embedding(cfg.max_positions or cfg.seq_len, cfg.d_model),
                h=nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layers)),
                ln_f=nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps),
            ))
        elif cfg.architecture in LLAMA_LIKE:
            self.model = nn.ModuleDict(dict(
                embed_tokens=nn.Embedding(cfg.vocab_size, cfg.d_model),
                layers=nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers)),
                norm=RMSNorm(cfg.d_model, cfg.norm_eps),
            ))
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            raise ValueError(f"unknown architecture {cfg.architecture!r}")
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        self.reset_parameters()

    @property
    def embedding(self) -> nn.Embedding:
        return cast(nn.Embedding, self.transformer.wte if self.cfg.architecture == "gpt" else self.model.embed_tokens)

    @property
    def blocks(self) -> nn.ModuleList:
        return cast(nn.ModuleList, self.transformer.h if self.cfg.architecture == "gpt" else self.model.layers)

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02); residual output projections scaled by 1/sqrt(2L); norms ones, biases zeros."""
        residual_out = ("attn.c_proj.weight", "mlp.c_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight")
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(residual_out) else 0.02
                nn.init.normal_(p, 0.0, std)
            else:
                nn.init.ones_(p)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, *, position_ids: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None, reduction: str = "mean") -> torch.Tensor:
        if self.cfg.architecture == "gpt":
            gpt: Any = self.transformer  # submodules by name (nn.Module's __getattr__ is untyped)
            x = gpt.wte(idx) + gpt.wpe(torch.arange(idx.size(1), device=idx.device) if position_ids is None else position_ids)
            rope, final_norm = None, gpt.ln_f
        else:
            llama: Any = self.model
            x = llama.embed_tokens(idx)
            rope = (cast(torch.Tensor, self.rope_cos), cast(torch.Tensor, self.rope_sin))
            if position_ids is not None:  # (B, 1, T, head_dim): one row of the tables per token, broadcast over the heads
                rope = (rope[0][position_ids].unsqueeze(1), rope[1][position_ids].unsqueeze(1))
            final_norm = llama.norm
        for block in self.blocks:
            if self.cfg.activation_checkpointing and self.training:
                x = checkpoint(block, x, rope, attn_mask, use_reentrant=False)
            else:
                x = block(x, rope, attn_mask)
        logits = self.lm_head(final_norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


def build_model(cfg: ModelConfig, seed: int, device: torch.device | str | None = None) -> Decoder:
    """Deterministic in seed: every rank builds bit-identical weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device or "cpu"):
            return Decoder(cfg)


# ---------------------------------------------------------------------------------- size and cost
def count_params(cfg: ModelConfig, *, exclude_positions: bool = True) -> int:
    """Parameters (tied embedding counted once); by default without the gpt position table (PaLM's N)."""
    d, f, L, V = cfg.d_model, cfg.ffn_hidden, cfg.n_layers, cfg.vocab_size
    if cfg.architecture == "gpt":
        block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
        extra = 2 * d + (0 if exclude_positions else (cfg.max_positions or cfg.seq_len) * d)
    else:
        q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        block = 2 * d + d * q + 2 * d * kv + q * d + 3 * d * f
        block += (q + 2 * kv if cfg.qkv_bias else 0) + (2 * cfg.head_dim if cfg.qk_norm else 0)
        extra = d
    embeddings = V * d * (1 if cfg.tie_embeddings else 2)
    return L * block + extra + embeddings


def flops_per_token(cfg: ModelConfig) -> int:
    """PaLM training FLOPs per token: 6N + 12·L·H·Q·T (N without position embeddings, tied embedding once)."""
    return 6 * count_params(cfg) + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * cfg.seq_len
