#!/usr/bin/env python3
"""Training throughput of llm_trainer on one GPU, next to the reference configs of gpu_baseline.py.

Our row runs the production code path: an LLMTrainingJob spec -> build_deepspeed_config -> Trainer.setup()
(model, fused AdamW, LambdaLR, deepspeed.initialize, engine.compile on GPU, prefetching synthetic-data loader)
-> Trainer.train_step(), timed step by step with a device synchronize after each (as the baseline times its
steps). Then, in the same run on the same card, the baseline script (outside this repo) runs the chosen reference
configs in its own subprocesses. Printed: tokens/s, MFU against 989 TFLOP/s (PaLM FLOPs per token), peak memory,
and our ratio to torch.compile and to Hugging Face GPT-2 + DeepSpeed ZeRO-2.

  GPU:        python benchmarks/bench_trainer.py --baseline ../shared/bench/gpu_baseline.py [--preset gpt2-124m]
  CPU smoke:  python benchmarks/bench_trainer.py --tiny --device cpu [--baseline ...]

JSON: <out>/bench_trainer.json (out defaults to $OUT or /tmp/out); the baseline writes <out>/baseline/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEAK_FLOPS = 989e12  # H100 SXM dense bf16, as in gpu_baseline.py
# gpu_baseline.py shapes: micro-batch per preset, and its reference configs for that size
BASELINE_SHAPES = {
    "gpt2-124m": (16, ["torch-compile", "hf-ds-zero2", "ds-zero0-autocast-compile"]),
    "gpt2-350m": (8, ["torch-compile-350m", "ds-zero2-350m", "ds-zero1-autocast-compile-350m"]),
    "gpt2-1.3b": (4, ["torch-compile-1.3b", "ds-zero2-1.3b", "ds-zero1-autocast-compile-1.3b"]),
}
TINY_MODEL = {"architecture": "gpt", "nLayers": 2, "dModel": 64, "nHeads": 4, "seqLen": 64, "vocabSize": 50304}
TORCH_COMPILE = ("torch-compile", "torch-eager")  # the ratio's denominator: torch-compile*, else torch-eager
HF_DS = "hf-ds-zero2"


def job_manifest(args) -> dict:
    micro = 2 if args.tiny else (args.micro_batch or BASELINE_SHAPES.get(args.preset, (8, []))[0])
    model = dict(TINY_MODEL) if args.tiny else {"preset": args.preset}
    return {
        "apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": "bench"},
        "spec": {
            "image": "bench", "accelerator": "cpu" if args.device == "cpu" else "gpu", "nodes": 1, "slotsPerNode": 1,
            "model": model,
            "data": {"format": "synthetic"},
            "training": {"steps": args.warmup + args.steps, "microBatchSize": micro,
                         "precision": "fp32" if args.tiny else args.precision, "zeroStage": args.zero_stage,
                         "learningRate": 3e-4, "weightDecay": 0.1, "warmupSteps": 0, "schedule": "constant",
                         "compile": not args.tiny and not args.no_compile,
                         "activationCheckpointing": args.act_ckpt, "logIntervalSteps": 10**6},
            "checkpoint": {"intervalSteps": 0, "resume": "none"},
        },
    }


# ------------------------------------------------------------------------------------ our worker
def run_ours(args) -> dict:
    """In this (fresh) process: the trainer's own setup and step, timed."""
    if args.device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ["LLMTRAIN_METRICS_PORT"] = "0"
    import torch

    from llm_operator.api import parse_job
    from llm_trainer.engine import init_distributed
    from llm_trainer.model import count_params
    from llm_trainer.worker import Trainer, parse_args

    job = parse_job(job_manifest(args))
    dist = init_distributed(job.spec.accelerator)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(job, parse_args(["--job", "-", "--output-dir", tmp]), dist, job.spec)
        t0 = time.perf_counter()
        trainer.setup()
        trainer.resume()
        cuda = dist.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        setup_s = time.perf_counter() - t0
        losses, times = [], []
        t0 = time.perf_counter()
        for _ in range(args.warmup):  # torch.compile, allocator warm-up
            trainer.train_step()
        sync()
        warmup_s = time.perf_counter() - t0
        for _ in range(args.steps):
            t0 = time.perf_counter()
            trainer.train_step()
            sync()
            times.append(time.perf_counter() - t0)
            losses.append(trainer.interval_loss.item() / trainer.interval_steps)  # outside the timed region
            trainer.interval_loss.zero_()
            trainer.interval_steps = 0
        trainer.loader.close()
        step_s = statistics.median(times)
        tokens_per_s = trainer.tokens_per_step / step_s
        fpt = trainer.flops_per_token
        return {"config": f"llm_trainer zero{job.spec.training.zero_stage}", "status": "ok",
                "n_params": count_params(trainer.cfg),
                "zero_stage": job.spec.training.zero_stage, "precision": job.spec.training.precision,
                "compiled": bool(job.spec.training.compile and cuda), "ds_config": trainer.ds_config,
                "tokens_per_step": trainer.tokens_per_step, "flops_per_token": fpt, "step_ms_median": step_s * 1e3,
                "step_ms_min": min(times) * 1e3, "tokens_per_s": tokens_per_s, "mfu": tokens_per_s * fpt / PEAK_FLOPS,
                "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                "loss_first": losses[0], "loss_last": losses[-1], "setup_s": setup_s, "warmup_s": warmup_s,
                "device": torch.cuda.get_device_name() if cuda else "cpu"}


def ours_in_subprocess(args, zero_stage: int, out: Path) -> dict:
    from llm_trainer.cli import free_port

    result = out / f"ours-zero{zero_stage}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(result), "--zero-stage", str(zero_stage),
           "--device", args.device, "--preset", args.preset, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--precision", args.precision, *(["--tiny"] * args.tiny), *(["--no-compile"] * args.no_compile),
           *(["--act-ckpt"] * args.act_ckpt), *(["--micro-batch", str(args.micro_batch)] if args.micro_batch else [])]
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), PYTHONUNBUFFERED="1", NCCL_SOCKET_IFNAME="lo")
    t0 = time.perf_counter()
    log = out / f"ours-zero{zero_stage}.log"
    with open(log, "w") as f:
        try:
            code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout_s).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if result.exists():
        res = json.loads(result.read_text())
    else:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        res = {"config": f"llm_trainer zero{zero_stage}", "status": "error", "error": f"exit {code}: " + " | ".join(tail)}
    res["wall_s"] = time.perf_counter() - t0
    return res


def worker_main(args) -> None:
    res = run_ours(args)
    Path(args.worker).write_text(json.dumps(res))
    sys.stdout.flush()
    os._exit(0)


# ------------------------------------------------------------------------------------- baseline
def run_baseline(args, out: Path) -> tuple[list[dict], dict]:
    names = args.baseline_configs or ("torch-eager,torch-compile,hf-ds-zero2" if args.tiny
                                      else ",".join(BASELINE_SHAPES[args.preset][1]))
    bout = out / "baseline"
    cmd = [sys.executable, args.baseline, "--only", names, "--device", args.device, "--out", str(bout),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--budget-s", str(args.budget_s),
           "--timeout-s", str(args.timeout_s), *(["--tiny"] * args.tiny)]
    print(f"baseline: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, timeout=args.budget_s + args.timeout_s + 120)
    data = json.loads((bout / "baseline.json").read_text())
    return data["results"], data["meta"]


def print_table(rows: list[dict], meta: dict) -> None:
    denominators = {}
    for r in rows:
        if r.get("status") == "ok":
            denominators.setdefault(r["config"], r["tokens_per_s"])
    compile_ref = next((tps for prefix in TORCH_COMPILE for n, tps in denominators.items() if n.startswith(prefix)), None)
    hf_ref = denominators.get(HF_DS)
    print()
    print(f"device: {meta.get('gpu') or meta.get('args', meta).get('device', '?')} | MFU vs {PEAK_FLOPS / 1e12:.0f} TFLOP/s | "
          f"matmul ceiling {meta.get('matmul_tflops') or float('nan'):.1f} TFLOP/s")
    head = f"{'config':<34} {'status':>7} {'tok/s':>11} {'MFU%':>6} {'peakGiB':>8} {'vs compile':>11} {'vs HF+DS':>9} {'loss':>15}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ok = r.get("status") == "ok"
        tps = r.get("tokens_per_s") if ok else None
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        loss = f"{r['loss_first']:.3f}->{r['loss_last']:.3f}" if ok else "-"
        print(f"{r['config']:<34} {r.get('status', '?'):>7} {fmt(tps, ',.0f'):>11} "
              f"{fmt(ok and 100 * r['mfu'] or None, '.2f'):>6} {fmt(r.get('peak_mem_gib'), '.2f'):>8} "
              f"{fmt(tps and compile_ref and tps / compile_ref, '.3f'):>11} {fmt(tps and hf_ref and tps / hf_ref, '.3f'):>9} {loss:>15}")
        if not ok:
            print(f"    {r.get('error', '')[:300]}")
    print(flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2-124m", choices=sorted(BASELINE_SHAPES), help="model size (baseline shapes)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="2 layers, 64 dim, seq 64, micro-batch 2, fp32, no compile")
    p.add_argument("--zero-stages", default="1", help="comma-separated ZeRO stages of our trainer to measure (default 1)")
    p.add_argument("--zero-stage", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--micro-batch", type=int, help="default: the baseline's micro-batch for the preset")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--act-ckpt", action="store_true", help="activation checkpointing (for 1.3B on smaller cards)")
    p.add_argument("--steps", type=int, help="timed steps (default 20; 3 with --tiny)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 5; 1 with --tiny)")
    p.add_argument("--baseline", help="path of gpu_baseline.py (e.g. ../shared/bench/gpu_baseline.py); omit to skip")
    p.add_argument("--baseline-configs", help="comma-separated baseline configs (default: per preset)")
    p.add_argument("--budget-s", type=float, default=400, help="the baseline's --budget-s")
    p.add_argument("--timeout-s", type=float, default=300, help="per-config timeout")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or (3 if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    if args.worker:
        return worker_main(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for stage in (int(s) for s in args.zero_stages.split(",")):
        print(f"llm_trainer ZeRO-{stage} ...", flush=True)
        rows.append(ours_in_subprocess(args, stage, out))
        r = rows[-1]
        if r["status"] == "ok":
            print(f"  {r['tokens_per_s']:,.0f} tok/s, MFU {100 * r['mfu']:.1f}%, loss {r['loss_first']:.2f}->{r['loss_last']:.2f}", flush=True)
        else:
            print(f"  {r['status']}: {r.get('error', '')[:500]}", flush=True)
    meta = {"device": args.device}
    if args.baseline:
        base_rows, meta = run_baseline(args, out)
        rows += base_rows
    (out / "bench_trainer.json").write_text(json.dumps({"meta": meta, "args": vars(args), "results": rows}, indent=1))
    print_table(rows, meta)
    print(f"JSON: {out / 'bench_trainer.json'}")
    if any(r.get("status") != "ok" for r in rows if r["config"].startswith("llm_trainer")):
        sys.exit(1)


if __name__ == "__main__":
    main()
