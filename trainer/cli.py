"""`llm-train`: run a job on this machine, check a manifest, or (in a pod) launch a node's ranks.

    llm-train run JOB.yaml [--output-dir DIR] [--ranks N] [--master-port P] [--stop-at-step K]
    llm-train validate JOB.yaml
    llm-train launch ...            (the in-pod entrypoint, llm_trainer.launch)

`run` starts nodes × slotsPerNode ranks (or --ranks) through DeepSpeed's own launcher
(`python -m deepspeed.launcher.runner --num_gpus N --module llm_trainer.worker ...`), the same program the pods
run. With accelerator cpu, or without a GPU, the ranks are CPU processes (DS_ACCELERATOR=cpu, gloo).
Exit code: 0 when the job completed (markers/complete.json), 143 when it stopped early on SIGTERM/SIGINT or
--stop-at-step with a checkpoint saved (markers/preempted.json; run again to resume), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

PREEMPTED_EXIT = 143


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_validate(args: argparse.Namespace) -> int:
    from llm_operator.api import SpecError, load_job_file
    from llm_operator.api.deepspeed_config import build_deepspeed_config

    from .model import count_params, flops_per_token
    from .worker import model_config

    try:
        job = load_job_file(args.job)
        ds_config = build_deepspeed_config(job.spec)
    except (SpecError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    spec = job.spec
    micro, accumulation, global_batch = spec.batch_plan()
    plan = {"job": job.metadata.name, "ranks": spec.world_size, "accelerator": spec.accelerator,
            "batch": {"microBatchSize": micro, "gradientAccumulation": accumulation, "globalBatchSize": global_batch}}
    if spec.model.hugging_face_path and not os.path.isfile(os.path.join(spec.model.hugging_face_path, "config.json")):
        plan["model"] = {"huggingFacePath": spec.model.hugging_face_path, "note": "config.json not readable here"}
    else:
        cfg = model_config(spec)
        plan["model"] = {**{k: v for k, v in vars(cfg).items() if v is not None}, "parameters": count_params(cfg),
                         "flopsPerToken": flops_per_token(cfg)}
        plan["batch"]["tokensPerStep"] = global_batch * cfg.seq_len
    plan["deepspeed"] = ds_config
    print(json.dumps(plan, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from llm_operator.api import SpecError, load_job_file

    from . import markers
    from .worker import SUMMARY

    try:
        job = load_job_file(args.job)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    spec = job.spec
    out = Path(args.output_dir or f"./runs/{job.metadata.name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop(markers.MARKER_DIR_ENV, None)
    if spec.accelerator == "cpu" or not _has_gpu():
        env["DS_ACCELERATOR"] = "cpu"
        ranks = args.ranks or spec.world_size
        # one OpenMP pool per rank, no oversubscription of the cores
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
        env.setdefault("LOCAL_SIZE", str(ranks))  # the CPU accelerator's device count in DeepSpeed's runner
    else:
        import torch

        ranks = args.ranks or min(spec.world_size, torch.cuda.device_count())
    cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
           "--master_addr", "127.0.0.1", "--master_port", str(args.master_port or free_port()),
           "--hostfile", str(out / "no-hostfile"),  # single node, even if /job/hostfile exists
           "--module", "llm_trainer.worker",
           "--job", str(Path(args.job).resolve()), "--output-dir", str(out)]
    if args.stop_at_step is not None:
        cmd += ["--stop-at-step", str(args.stop_at_step)]
    if not args.no_progress and sys.stderr.isatty():
        cmd.append("--progress")
    print(f"llm-train: {job.metadata.name}: {ranks} rank(s) on {env.get('DS_ACCELERATOR', 'cuda')}, output {out}",
          file=sys.stderr, flush=True)

    _become_subreaper()
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    forwarded = []

    def forward(signum, frame):
        """First signal: SIGTERM to the whole launcher tree (every rank saves a checkpoint and stops); second: SIGKILL."""
        try:
            os.killpg(proc.pid, signal.SIGKILL if forwarded else signal.SIGTERM)
        except ProcessLookupError:
            pass
        forwarded.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = proc.wait()
    _reap_orphans()  # DeepSpeed's runner dies on SIGTERM at once; its launcher and the ranks may still be saving

    marker_dir = markers.marker_dir(out)
    complete, preempted = markers.read(marker_dir, markers.COMPLETE), markers.read(marker_dir, markers.PREEMPTED)
    if complete:
        summary = json.loads((out / SUMMARY).read_text())
        print(f"llm-train: complete at step {complete['step']}: loss {summary['initial_loss']:.4f} -> "
              f"{summary['final_loss']:.4f}, model {summary['model']}, summary {out / SUMMARY}", file=sys.stderr)
        return 0
    if preempted:
        print(f"llm-train: stopped at step {preempted['step']} ({preempted['reason']}), checkpoint "
              f"{preempted['tag']} saved; run again to resume", file=sys.stderr)
        return PREEMPTED_EXIT
    print(f"llm-train: failed (launcher exit code {code}, no completion marker in {marker_dir})", file=sys.stderr)
    return code if code > 0 else 1


def _become_subreaper() -> None:
    """Orphaned descendants (launcher, ranks) are re-parented to this process, so it can wait for them."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER (Linux)
    except (OSError, AttributeError):
        pass


def _reap_orphans() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:
        from .launch import main as launch_main  # the in-pod entrypoint (imports only when used)

        return launch_main(argv[1:])
    p = argparse.ArgumentParser(prog="llm-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a job on this machine")
    run.add_argument("job", help="LLMTrainingJob manifest")
    run.add_argument("--output-dir", help="checkpoints, metrics files, summary.json, model/ (default ./runs/<name>)")
    run.add_argument("--ranks", type=int, help="processes to start (default nodes × slotsPerNode; GPUs on GPU)")
    run.add_argument("--master-port", type=int, help="rendezvous port (default: a free one)")
    run.add_argument("--stop-at-step", type=int, help="checkpoint and stop after this step (resume by running again)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)
    validate = sub.add_parser("validate", help="check a manifest, print the resolved model, batch plan and DeepSpeed config")
    validate.add_argument("job")
    validate.set_defaults(func=cmd_validate)
    sub.add_parser("launch", help="in-pod entrypoint: wait for peers, run DeepSpeed, check completion markers")
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
