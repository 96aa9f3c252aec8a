"""What packing costs in attention, and what it saves in padding, measured in one run on this machine.

    python benchmarks/bench_sft_attention.py [--device cpu|cuda] [--seq-len 1024] [--examples 4]

Attention forward + backward of one batch (B sequences of T tokens, H heads of D), three ways:
  causal     F.scaled_dot_product_attention(is_causal=True): one sequence per row (no packing), the kernel's fast path
  block      the same call with the (B, 1, T, T) block-diagonal causal mask packing uses (trainer/sft/packing.py)
  varlen     torch.nn.attention.varlen.varlen_attn with cumulative lengths (flash-attention varlen; CUDA only)
and, on the shipped chat data (tests/trainer/data), the share of a row's positions that are targets with packing
off and on. Prints medians and the ratios block/causal (and varlen/causal): ratios from the same run, never
absolute figures compared across machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def segments_of(B: int, T: int, examples: int, device) -> torch.Tensor:
    """Each row split into `examples` documents of random lengths (as packing leaves them), seeded."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(B):
        cuts = np.sort(rng.choice(np.arange(1, T), examples - 1, replace=False))
        lengths = np.diff(np.concatenate([[0], cuts, [T]]))
        rows.append(np.repeat(np.arange(1, examples + 1), lengths))
    return torch.as_tensor(np.stack(rows), device=device)


def timed(fn, device, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def attention_costs(device, B: int, T: int, H: int, D: int, examples: int, repeats: int) -> dict[str, float]:
    from llm_trainer.sft.packing import block_causal_mask

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    segments = segments_of(B, T, examples, device)
    mask = block_causal_mask(segments)

    def run(**kwargs):
        F.scaled_dot_product_attention(q, k, v, **kwargs).sum().backward()

    out = {"causal": timed(lambda: run(is_causal=True), device, repeats), "block": timed(lambda: run(attn_mask=mask), device, repeats)}
    if device.type == "cuda":
        try:
            from torch.nn.attention.varlen import varlen_attn

            flat = [t.detach().transpose(1, 2).reshape(B * T, H, D).requires_grad_() for t in (q, k, v)]
            starts = torch.ones_like(segments, dtype=torch.bool)
            starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
            cu = torch.cat([torch.nonzero(starts.reshape(-1)).reshape(-1), torch.tensor([B * T], device=device)]).to(torch.int32)
            longest = int((cu[1:] - cu[:-1]).max())
            out["varlen"] = timed(lambda: varlen_attn(*flat, cu, cu, longest, longest, window_size=(-1, 0)).sum().backward(), device, repeats)
        except Exception as exc:  # no flash-attention kernel for this GPU/build
            print(f"varlen_attn unavailable: {type(exc).__name__}: {exc}")
    return out


def padding_share(seq_len: int) -> dict[str, float]:
    """Share of row positions that are trained on, shipped chat data, packing off and on."""
    from llm_trainer.sft.dataset import SFTSource, read_examples
    from llm_trainer.sft.tokenizer import load_tokenizer

    data = REPO / "tests" / "trainer" / "data"
    tok = load_tokenizer(str(data / "chatml"))
    examples = read_examples([str(data / "chat-train.jsonl")], tok, "chat", "assistant")
    offsets = np.cumsum([0] + [len(e.ids) for e in examples])
    ids, targets = np.concatenate([e.ids for e in examples]), np.concatenate([e.targets for e in examples])
    out = {}
    for packing in (False, True):
        source = SFTSource.from_arrays(ids, targets, offsets, seq_len, packing, tok.pad_id)
        real = (source.rows[:, 2, :] != 0).sum()
        out["packed" if packing else "padded"] = {"rows": len(source.rows), "real_token_share": float(real / source.rows[:, 2, :].size)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--examples", type=int, default=4, help="documents per packed row")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    device = torch.device(a.device)
    costs = attention_costs(device, a.batch, a.seq_len, a.heads, a.head_dim, a.examples, a.repeats)
    result = {"device": str(device), "batch": a.batch, "seq_len": a.seq_len, "heads": a.heads, "head_dim": a.head_dim,
              "examples_per_row": a.examples, "seconds": costs,
              "ratios": {f"{name}/causal": costs[name] / costs["causal"] for name in costs if name != "causal"},
              "chat_data_seq_len_256": padding_share(256)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
