"""LoRA against full fine-tuning of the same model, on CPU, in one run: trainable parameters, optimizer-state bytes,
peak memory.

    python benchmarks/bench_lora.py --out /tmp/bench-lora

Both configurations fine-tune the same Hugging Face start (a random Llama written here, no hub) with the trainer's own
setup and step (worker.Trainer: build_deepspeed_config, deepspeed.initialize, ZeRO-1, fp32, one gloo rank), each in a
fresh subprocess so that one's memory is not the other's. Measured per configuration:

  trainable parameters     parameters with requires_grad (what reaches the optimizer)
  optimizer-state bytes    every tensor in the optimizer's state (AdamW's exp_avg, exp_avg_sq) plus ZeRO's fp32
                           partition of the trained parameters
  peak memory              the process' peak resident set (ru_maxrss) minus its resident set before Trainer.setup():
                           model, gradients, optimizer, activations and DeepSpeed's buffers of training steps

Printed with the ratio LoRA / full of each, and written to <out>/bench_lora.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = {"n_layers": 8, "d_model": 512, "n_heads": 8, "n_kv_heads": 4, "ffn_hidden": 1536, "seq_len": 128, "vocab_size": 8192}


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def job_manifest(base: str, lora: dict | None, steps: int) -> dict:
    training = {"steps": steps, "microBatchSize": 4, "precision": "fp32", "zeroStage": 1, "learningRate": 1e-4,
                "warmupSteps": 0, "schedule": "constant", "compile": False, "logIntervalSteps": 10**6}
    if lora:
        training["lora"] = lora
    return {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": "bench-lora"},
            "spec": {"image": "bench", "accelerator": "cpu", "nodes": 1, "slotsPerNode": 1,
                     "model": {"huggingFacePath": base, "seqLen": MODEL["seq_len"]}, "data": {"format": "synthetic"},
                     "training": training, "checkpoint": {"intervalSteps": 0, "resume": "none"}}}


def optimizer_state_bytes(engine) -> int:
    optimizer = engine.optimizer
    inner = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer under ZeRO's wrapper
    total = sum(t.numel() * t.element_size() for state in inner.state.values() for t in state.values() if hasattr(t, "numel") and t.dim() > 0)
    for flat in getattr(optimizer, "single_partition_of_fp32_groups", []):  # ZeRO-1/2's fp32 copy of the trained partition
        total += flat.numel() * flat.element_size()
    return total


def measure(base: str, lora: dict | None, steps: int) -> dict:
    """In this (fresh) process: the trainer's setup and `steps` training steps."""
    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ["LLMTRAIN_METRICS_PORT"] = "0"
    from llm_operator.api import parse_job
    from llm_trainer.engine import init_distributed
    from llm_trainer.worker import Trainer, parse_args

    job = parse_job(job_manifest(base, lora, steps))
    dist = init_distributed("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(job, parse_args(["--job", "-", "--output-dir", tmp]), dist, job.spec)
        before = resident_bytes()
        trainer.setup()
        trainer.resume()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        step_s = (time.perf_counter() - t0) / steps
        loss = trainer.interval_loss.item() / trainer.interval_steps
        trainer.loader.close()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
        params = sum(p.numel() for p in trainer.engine.module.parameters())
        return {"config": "lora" if lora else "full", "parameters": params, "trainable_parameters": trainer.trainable_parameters,
                "optimizer_state_bytes": optimizer_state_bytes(trainer.engine), "peak_memory_bytes": peak - before,
                "step_s": step_s, "loss": loss}


def in_subprocess(base: str, lora: dict | None, steps: int, out: Path) -> dict:
    from llm_trainer.cli import free_port

    name = "lora" if lora else "full"
    result, log = out / f"{name}.json", out / f"{name}.log"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(result), "--base", base, "--steps", str(steps),
           *(["--lora", json.dumps(lora)] if lora else [])]
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    with open(log, "w") as f:
        code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=1800).returncode
    if code or not result.exists():
        raise SystemExit(f"{name} failed (exit {code}):\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
    return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/bench-lora")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rank", type=int, default=8, help="training.lora.rank")
    p.add_argument("--targets", default="all-linear", help="training.lora.targetModules, comma-separated")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--lora", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        Path(args.worker).write_text(json.dumps(measure(args.base, json.loads(args.lora) if args.lora else None, args.steps)))
        sys.stdout.flush()
        os._exit(0)

    from llm_trainer.hf import save_hf_model
    from llm_trainer.model import ModelConfig, build_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base"
    cfg = ModelConfig(architecture="llama", tie_embeddings=False, **MODEL)
    save_hf_model(cfg, build_model(cfg, seed=0).state_dict(), base)
    lora = {"rank": args.rank, "alpha": 2.0 * args.rank, "targetModules": args.targets.split(",")}
    rows = [in_subprocess(str(base), None, args.steps, out), in_subprocess(str(base), lora, args.steps, out)]
    full, adapted = rows
    print(f"model: llama {MODEL}, {full['parameters']:,} parameters; LoRA rank {args.rank} on {args.targets}; "
          f"ZeRO-1, fp32, micro-batch 4, 1 CPU rank, {args.steps} steps")
    print(f"{'':24}{'full':>16}{'lora':>16}{'lora / full':>14}")
    for key, fmt in (("trainable_parameters", "{:,.0f}"), ("optimizer_state_bytes", "{:,.1f} MiB"), ("peak_memory_bytes", "{:,.1f} MiB"),
                     ("step_s", "{:,.3f} s")):
        scale = 2**20 if "MiB" in fmt else 1
        f, a = full[key] / scale, adapted[key] / scale
        print(f"{key:24}{fmt.format(f):>16}{fmt.format(a):>16}{a / f:>14.4f}")
    (out / "bench_lora.json").write_text(json.dumps({"model": MODEL, "lora": lora, "steps": args.steps, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
