"""`llm-train`: run a job on this machine, check a manifest, or (in a pod) launch a node's ranks.

    llm-train run JOB.yaml [--output-dir DIR] [--fresh] [--log-format text|json] [--ranks N] [--master-port P]
                           [--stop-at-step K] [--no-progress]
    llm-train validate JOB.yaml
    llm-train launch ...            (the in-pod entrypoint, llm_trainer.launch)

`run` starts nodes × slotsPerNode ranks (or --ranks) through DeepSpeed's own launcher
(`python -m deepspeed.launcher.runner --num_gpus N --module llm_trainer.worker ...`), the same program the pods
run. With accelerator cpu, or without a GPU, the ranks are CPU processes (DS_ACCELERATOR=cpu, gloo).
Their output goes to <output-dir>/train.log; the console shows a progress bar and a few lines on a terminal,
JSON lines otherwise (--log-format). A run resumes from the output directory's checkpoint, says so and exits 0
if the job is already complete, and refuses a directory holding another job's run or a checkpoint this manifest
no longer fits (--fresh discards it).
Exit code: 0 when the job completed (markers/complete.json), 143 when it stopped early on SIGTERM/SIGINT or
--stop-at-step with a checkpoint saved (markers/preempted.json; run again to resume), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from .markers import MARKER_DIR_ENV
from .shm import release_allreduce_buffers

PREEMPTED_EXIT = 143


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_validate(args: argparse.Namespace) -> int:
    from llm_operator.api import SpecError, load_job_file
    from llm_operator.api.deepspeed_config import build_deepspeed_config

    from .model import count_params, flops_per_token
    from .preflight import PreflightError, check
    from .worker import model_config

    try:
        job = load_job_file(args.job)
        if job.spec.program is not None:  # the program brings its own config; only the shape is ours to check
            program = job.spec.program.model_dump(by_alias=True, exclude_none=True)
            print(json.dumps({"job": job.metadata.name, "ranks": job.spec.world_size, "accelerator": job.spec.accelerator,
                              "program": program}, indent=2))
            return 0
        ds_config = build_deepspeed_config(job.spec)
        checked = check(job.spec, here=True)  # paths on volumes only the pods mount are listed, not failed
    except (SpecError, PreflightError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    except (OSError, yaml.YAMLError) as exc:
        print(f"{args.job}: {exc}", file=sys.stderr)
        return 1
    spec = job.spec
    micro, accumulation, global_batch = spec.batch_plan()
    plan: dict[str, Any] = {"job": job.metadata.name, "ranks": spec.world_size, "accelerator": spec.accelerator,
            "batch": {"microBatchSize": micro, "gradientAccumulation": accumulation, "globalBatchSize": global_batch}}
    if spec.model_spec.hugging_face_path and not os.path.isfile(os.path.join(spec.model_spec.hugging_face_path, "config.json")):
        plan["model"] = {"huggingFacePath": spec.model_spec.hugging_face_path, "note": "config.json not readable here"}
    else:
        cfg = model_config(spec)
        plan["model"] = {**{k: v for k, v in vars(cfg).items() if v is not None}, "parameters": count_params(cfg),
                         "flopsPerToken": flops_per_token(cfg)}
        plan["batch"]["tokensPerStep"] = global_batch * cfg.seq_len
    plan["deepspeed"] = ds_config
    if checked.not_checked:
        plan["notCheckedHere"] = checked.not_checked
    print(json.dumps(plan, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from llm_operator.api import SpecError, load_job_file

    from . import markers, rundir
    from .console import JsonConsole, TextConsole
    from .preflight import PreflightError, check

    text = args.log_format == "text" or (args.log_format is None and sys.stdout.isatty())
    console = TextConsole(bar=sys.stdout.isatty() and not args.no_progress) if text else JsonConsole()
    try:
        job = load_job_file(args.job)
    except SpecError as exc:
        console.error(str(exc))
        return 1
    except (OSError, yaml.YAMLError) as exc:
        console.error(f"{args.job}: {exc}")
        return 1
    if job.spec.program is not None:
        from .program_run import run_program

        return run_program(job, Path(args.job).resolve(), Path(args.output_dir or f"./runs/{job.metadata.name}").resolve(),
                           args.master_port or free_port())
    try:
        check(job.spec)  # every input file, before DeepSpeed and the model start
    except PreflightError as exc:
        console.error(str(exc))
        return 1
    spec, name = job.spec, job.metadata.name
    manifest = Path(args.job).resolve()
    out = Path(args.output_dir or f"./runs/{name}").resolve()
    console.describe(name, out, spec.training.steps, model_label(spec))
    ranks, env = _ranks_and_env(spec, args.ranks)

    key = rundir.resume_key(spec, ranks)
    try:
        out.mkdir(parents=True, exist_ok=True)
        rundir.lock(out)  # held until this process exits
        removed = rundir.clear(out) if args.fresh else []
        rundir.check_continuable(out, name, key)
    except rundir.Refused as exc:
        console.error(str(exc))
        return 1
    except OSError as exc:
        console.error(f"--output-dir {out}: {exc}")
        return 1
    marker_dir = out / rundir.MARKERS
    done = markers.read(marker_dir, markers.COMPLETE)
    if done is not None and done.get("step", 0) >= spec.training.steps and spec.checkpoint.resume == "latest":
        console.already_complete(done["step"], *rundir.losses(out))
        return 0
    rundir.write_record(out, name, manifest, key)

    master_port = str(args.master_port or free_port())
    cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
           "--master_addr", "127.0.0.1", "--master_port", master_port,
           "--hostfile", str(out / "no-hostfile"),  # single node, even if /job/hostfile exists
           "--module", "llm_trainer.worker", "--job", str(manifest), "--output-dir", str(out)]
    if args.stop_at_step is not None:
        cmd += ["--stop-at-step", str(args.stop_at_step)]
    if console.wants_steps:
        cmd.append("--step-events")  # a line per step for the progress bar
    log = out / rundir.LOG
    console.begin(ranks, env.get("DS_ACCELERATOR", "cuda"), log, removed)
    code = _launch(cmd, env, log, console)
    release_allreduce_buffers("127.0.0.1", master_port)  # ranks killed by a signal leave theirs behind

    complete, preempted = markers.read(marker_dir, markers.COMPLETE), markers.read(marker_dir, markers.PREEMPTED)
    if complete is not None:
        console.complete(int(complete.get("step") or 0), rundir.read_json(out / rundir.SUMMARY) or {}, *rundir.losses(out))
        return 0
    if preempted is not None:
        console.preempted(preempted)
        return PREEMPTED_EXIT
    console.failed(code, log)
    return code if code > 0 else 1


def _ranks_and_env(spec, ranks: Optional[int]) -> tuple[int, dict[str, str]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop(MARKER_DIR_ENV, None)
    if spec.accelerator == "cpu" or not _has_gpu():
        env["DS_ACCELERATOR"] = "cpu"
        ranks = ranks or spec.world_size
        # one OpenMP pool per rank, no oversubscription of the cores
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
        env.setdefault("LOCAL_SIZE", str(ranks))  # the CPU accelerator's device count in DeepSpeed's runner
    else:
        import torch

        ranks = ranks or min(spec.world_size, torch.cuda.device_count())
    return ranks, env


def _launch(cmd: list[str], env: dict[str, str], log_path: Path, console, linger_timeout: float = 30.0) -> int:
    """Run DeepSpeed's runner under the in-pod launcher's Supervisor; every line it and the ranks print goes to the
    log file and to the console. SIGTERM/SIGINT go to the ranks only, as in the pods: each saves a checkpoint and
    exits on its own terms (signalling DeepSpeed's launcher would make it SIGKILL them 30 s later); a second
    signal goes to the whole runner."""
    from .launch.supervisor import Supervisor, become_subreaper

    become_subreaper()  # the ranks may outlive DeepSpeed's runner; this process waits for them
    with open(log_path, "a", buffering=1) as log:  # line-buffered: `tail -f` follows the run
        log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")

        def note(level: str, msg: str, **fields) -> None:
            """The supervisor's lines, from a signal handler too: one unbuffered write, never into log's buffer."""
            log.flush()
            os.write(log.fileno(), f"==== llm-train: {msg} {json.dumps(fields, default=str)}\n".encode())

        sup = Supervisor(log=note)
        sup.command = sup.spawn(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        sup.install_signal_handlers()
        try:
            assert sup.command.stdout is not None
            for line in sup.command.stdout:  # until every rank closed it, not only the runner
                log.write(line)
                console.line(line.rstrip("\n"))
        finally:
            console.close()
        code = sup.wait(sup.command)
        sup.drain(timeout=None if sup.received else linger_timeout)
    return code if code is not None else 1


def model_label(spec) -> str:
    m = spec.model_spec
    return m.preset or (Path(m.hugging_face_path).name if m.hugging_face_path else f"{m.architecture} {m.n_layers}×{m.d_model}")


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
    run.add_argument("--fresh", action="store_true",
                     help="discard the output directory's earlier run (checkpoints, model, markers) and train from step 0")
    run.add_argument("--log-format", choices=("text", "json"),
                     help="text: a progress bar and a few lines; json: JSON lines (default: text on a terminal)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar in the text view")
    run.set_defaults(func=cmd_run)
    validate = sub.add_parser("validate", help="check a manifest, print the resolved model, batch plan and DeepSpeed config")
    validate.add_argument("job")
    validate.set_defaults(func=cmd_validate)
    sub.add_parser("launch", help="in-pod entrypoint: wait for peers, run DeepSpeed, check completion markers")
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
