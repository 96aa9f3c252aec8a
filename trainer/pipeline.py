"""Pipeline parallelism with DeepSpeed's own engine: the decoder as a deepspeed.pipe.PipelineModule.

Layer specs, in order (each a module of model.py, so parameter names inside a layer are the Decoder's):

    0          token embedding   (TiedLayerSpec "embed" when tieEmbeddings: DeepSpeed keeps one copy on the
                                  first and one on the last stage and all-reduces their gradients)
    1          positions         (gpt: adds the learned position table; llama: nothing to add, no layer)
    blocks     one per transformer block (GPTBlock / LlamaBlock with its RoPE tables)
    final norm
    head       lm_head, or the tied embedding's weight transposed

The loss (mean cross-entropy in fp32, as Decoder.forward) is the PipelineModule's loss_fn on the last stage.
Every rank first builds the whole Decoder from the seed (or the Hugging Face weights) and copies its own
stages' layers from it, so a pipelined run starts from the very weights of the unpipelined one; export
gathers the layers back into the Decoder's layout (`gather_decoder_state`).

Micro-batches: DeepSpeed's PipelineEngine.train_batch() pulls gradient_accumulation_steps micro-batches
per optimizer step from the data iterator (first and last stage only) and runs its 1F1B schedule.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .model import Decoder, GPTBlock, LlamaBlock, ModelConfig, RMSNorm, rope_tables

TIED_KEY = "embed"


class TokenEmbedding(nn.Embedding):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.vocab_size, cfg.d_model)


class Positions(nn.Module):
    """gpt: x + wpe(0..T-1), the same sum as Decoder.forward."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.wpe = nn.Embedding(cfg.max_positions or cfg.seq_len, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.wpe(torch.arange(x.size(1), device=x.device))


class GPTBlockPipe(GPTBlock):
    def forward(self, x: torch.Tensor, rope=None, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return super().forward(x, attn_mask=attn_mask)


class LlamaBlockPipe(LlamaBlock):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, rope=None, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return super().forward(x, (self.rope_cos, self.rope_sin), attn_mask)


class FinalLayerNorm(nn.LayerNorm):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.d_model, eps=cfg.norm_eps)


class FinalRMSNorm(RMSNorm):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.d_model, cfg.norm_eps)


class Head(nn.Linear):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.d_model, cfg.vocab_size, bias=False)


def tied_head(embedding: nn.Embedding, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, embedding.weight)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def block_class(cfg: ModelConfig) -> type[nn.Module]:
    return GPTBlockPipe if cfg.architecture == "gpt" else LlamaBlockPipe


def layer_prefixes(cfg: ModelConfig) -> list[Optional[str]]:
    """For each layer spec, the Decoder's state-dict prefix of that layer's parameters (None: no parameters of its own)."""
    if cfg.architecture == "gpt":
        embed, positions = ["transformer.wte."], ["transformer."]  # Positions holds wpe
        blocks = [f"transformer.h.{i}." for i in range(cfg.n_layers)]
        norm = "transformer.ln_f."
    else:
        embed, positions = ["model.embed_tokens."], []
        blocks = [f"model.layers.{i}." for i in range(cfg.n_layers)]
        norm = "model.norm."
    head: Optional[str] = None if cfg.tie_embeddings else "lm_head."
    return [*embed, *positions, *blocks, norm, head]


def layer_specs(cfg: ModelConfig) -> list[Any]:
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    if cfg.tie_embeddings:
        embed: Any = TiedLayerSpec(TIED_KEY, TokenEmbedding, cfg, tied_weight_attr=["weight"])
        head: Any = TiedLayerSpec(TIED_KEY, TokenEmbedding, cfg, forward_fn=tied_head, tied_weight_attr=["weight"])
    else:
        embed, head = LayerSpec(TokenEmbedding, cfg), LayerSpec(Head, cfg)
    positions = [LayerSpec(Positions, cfg)] if cfg.architecture == "gpt" else []
    blocks = [LayerSpec(block_class(cfg), cfg) for _ in range(cfg.n_layers)]
    norm = LayerSpec(FinalLayerNorm if cfg.architecture == "gpt" else FinalRMSNorm, cfg)
    return [embed, *positions, *blocks, norm, head]


def partition_method(cfg: ModelConfig, partition: str) -> str:
    """blocks: DeepSpeed's type: method over the block class (equal blocks per stage); parameters: balanced counts."""
    return f"type:{block_class(cfg).__name__}" if partition == "blocks" else "parameters"


def build_pipeline_model(cfg: ModelConfig, stages: int, partition: str, full: Decoder):
    """The PipelineModule of this rank's stage, its layers copied from the whole decoder `full`."""
    from deepspeed.pipe import PipelineModule

    module = PipelineModule(
        layers=layer_specs(cfg), num_stages=stages, loss_fn=loss_fn,
        partition_method=partition_method(cfg, partition),
        # activation checkpointing per stage: recompute each block in backward, as Decoder does (non-reentrant)
        activation_checkpoint_interval=1 if cfg.activation_checkpointing else 0,
        activation_checkpoint_func=functools.partial(checkpoint, use_reentrant=False),
        checkpointable_layers=[block_class(cfg).__name__],
    )
    state = full.state_dict()
    with torch.no_grad():
        for index, layer in local_layers(module, cfg):
            prefix = layer_prefixes(cfg)[index]
            if prefix is None:
                continue
            own = {name: state[prefix + name] for name in layer.state_dict()}
            layer.load_state_dict(own)
        for tied in module.tied_modules.values():  # the last stage's copy of the embedding, used only by the head
            tied.load_state_dict({"weight": state[f"{layer_prefixes(cfg)[0]}weight"]})
    return module


def local_layers(module, cfg: ModelConfig) -> list[tuple[int, nn.Module]]:
    """(layer index, module) of this stage's layers that own parameters (a tied head reuses the embedding)."""
    out = []
    for offset, func in enumerate(module.forward_funcs):
        if isinstance(func, nn.Module):
            out.append((module._local_start + offset, func))
    return out


def local_decoder_state(module, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """This stage's parameters under the Decoder's names, on the CPU."""
    prefixes = layer_prefixes(cfg)
    state: dict[str, torch.Tensor] = {}
    for index, layer in local_layers(module, cfg):
        prefix = prefixes[index]
        if prefix is None:
            continue
        for name, tensor in layer.state_dict().items():
            state[prefix + name] = tensor.detach().to("cpu", copy=True)
    return state


def gather_decoder_state(engine, cfg: ModelConfig, is_main: bool) -> Optional[dict[str, torch.Tensor]]:
    """The whole model's state dict in the Decoder's layout on rank 0 (None elsewhere); a collective.

    Data-parallel rank 0 of every stage contributes its layers; the tied head (if any) is the embedding."""
    import torch.distributed as dist

    module = engine.module
    mine = local_decoder_state(module, cfg) if module._grid.data_parallel_id == 0 else {}
    gathered: Optional[list[Any]] = [None] * dist.get_world_size() if is_main else None
    dist.gather_object(mine, gathered, dst=0)
    if not is_main:
        return None
    assert gathered is not None
    state: dict[str, torch.Tensor] = {}
    for part in gathered:
        state.update(part)
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state[f"{layer_prefixes(cfg)[0]}weight"]
    return state


def train_batch(engine, loader, accumulation: int) -> torch.Tensor:
    """One optimizer step of the pipeline: `accumulation` micro-batches. Stages in the middle read no data but
    advance their sampler too, so that every rank's checkpointed data position is the same."""
    if engine.is_first_stage() or engine.is_last_stage():
        return engine.train_batch(loader)
    loss = engine.train_batch(None)
    loader.skip(accumulation)
    return loss


def evaluate(engine, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The held-out loss through the pipeline (evaluation.py's seam): DeepSpeed's eval_batch on every stage over this
    data-parallel rank's micro-batches. It averages them and the data-parallel ranks and broadcasts the mean to every
    stage, so Evaluation's mean over all ranks leaves it as it is."""
    micro_batches = list(batches)
    try:
        return engine.eval_batch(iter(micro_batches), num_micro_batches=len(micro_batches)).detach().float()
    finally:
        engine.module.train()  # eval_batch leaves the module in eval mode


def data_parallel_rank_and_size(engine, dist) -> tuple[int, int]:
    """Which share of each global micro-batch this rank reads: its data-parallel coordinate (every stage of a
    pipeline reads the same samples; only the first and last stage use them)."""
    grid = getattr(engine, "grid", None)
    if grid is None or not hasattr(engine, "is_first_stage"):
        return dist.rank, dist.world_size
    return grid.data_parallel_id, grid.data_parallel_size


def count_tied_weights_once(engine) -> None:
    """ZeRO 0 clips gradients with DeepSpeed's clip_grad_norm_, which sums the norms of every stage's parameters,
    the tied embedding's copy on the last stage included: the norm comes out too large and clips too much (ZeRO-1's
    optimizer skips those copies, `ds_pipe_replicated`). This replaces the engine's ZeRO-0 clipping with one that
    skips them too, and records the norm, so grad_norm is reported at ZeRO 0 as well."""
    import torch.distributed as dist

    max_norm = float(engine.gradient_clipping())

    def clip() -> None:
        params = [p for p in engine.module.parameters() if p.grad is not None]
        own = [p.grad.detach().float().norm() ** 2 for p in params if not getattr(p, "ds_pipe_replicated", False)]
        squared = torch.stack(own).sum() if own else torch.zeros((), device=engine.device)
        dist.all_reduce(squared, group=engine.grid.get_model_parallel_group())  # over the stages
        norm = squared.sqrt()
        coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)  # as torch's and DeepSpeed's clip_grad_norm_
        for p in params:
            p.grad.detach().mul_(coefficient)
        engine._global_grad_norm = norm  # read (and synchronized) only at log steps

    engine.clip_fp32_gradients = clip
