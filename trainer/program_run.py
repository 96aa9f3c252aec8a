"""`llm-train run JOB.yaml` for a job with spec.program: the pods' runner lines, on this machine.

Each "pod" is one `llm_trainer.launch` process (the launcher the pods run) with that pod's env; torchrun and exec
jobs get `nodes` of them, on loopback. DeepSpeed's runner cannot start two nodes of one host without ssh, so a
deepspeed job runs as one node of nodes × slotsPerNode ranks (the program sees the same world size).
`$(VAR)` in the command expands from the pod's env the way the kubelet expands a container's command.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from llm_operator.api import LLMTrainingJob
from llm_operator.api.contract import RESTART_ENV
from llm_operator.render.program import program_env, runner_command

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: a defined VAR is replaced, an undefined one stays as written, $$ is a literal $."""
    return _VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def _import_root() -> str:
    """The folder that gives llm_trainer its import name (site-packages, hack/typecheck), for the launcher; empty for an
    editable install, whose source folder trainer/ has the checkout as parent, where our operator/ would shadow the
    standard library's `operator` in every rank."""
    package_dir = Path(__file__).absolute().parent
    return str(package_dir.parent) if package_dir.name == "llm_trainer" else ""


def pod_commands(job: LLMTrainingJob, out: Path, master_port: int) -> list[tuple[list[str], dict[str, str]]]:
    """(launcher command, env) of every local pod."""
    spec = job.spec
    program = spec.program
    assert program is not None
    local_nodes, slots = (1, spec.world_size) if program.launcher == "deepspeed" else (spec.nodes, spec.slots_per_node)
    hostfile = out / "hostfile"
    hostfile.write_text(f"localhost slots={slots}\n")
    shaped = job.model_copy(update={"spec": spec.model_copy(update={"nodes": local_nodes, "slots_per_node": slots,
                                                                    "launcher": spec.launcher.model_copy(update={"master_port": master_port})})})
    pods = []
    for rank in range(local_nodes):
        env = {**os.environ, **program_env(shaped, rank, "127.0.0.1", str(hostfile), str(out / "checkpoints")), RESTART_ENV: "0"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_import_root(), os.environ.get("PYTHONPATH")) if p)
        if spec.accelerator == "cpu":
            env["DS_ACCELERATOR"] = "cpu"
        # deepspeed: one local node, no hostfile (DeepSpeed counts the ranks itself)
        runner = runner_command(program, nodes=local_nodes, slots=slots, node_rank=rank, master_addr="127.0.0.1",
                                master_port=master_port, hostfile=None if program.launcher == "deepspeed" else str(hostfile))
        command = [expand(arg, env) for arg in runner]
        checks = sorted({command[0], program.command[0]})
        # the receiver on loopback only (no /metrics port locally), as in the pods for HF Trainer and llmtraining_report
        launcher = [sys.executable, "-m", "llm_trainer.launch", "--termination-log", "", "--progress-port", "0",
                    "--progress-token", str(out / f"progress-token-{rank}"),
                    *[arg for name in checks for arg in ("--check-command", name)], "--", *command]
        pods.append((launcher, env))
    return pods


def run_program(job: LLMTrainingJob, manifest: Path, out: Path, master_port: int) -> int:
    """Exit status: 0 when every pod succeeded, else the first failing pod's (the others are stopped)."""
    program = job.spec.program
    assert program is not None
    out.mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    # A workingDir of the image (/workspace) rarely exists on a laptop: the manifest's directory stands in.
    cwd = program.working_dir if program.working_dir and os.path.isdir(program.working_dir) else str(manifest.parent)
    procs = [subprocess.Popen(cmd, env=env, cwd=cwd) for cmd, env in pod_commands(job, out, master_port)]
    failed: Optional[int] = None
    try:
        while any(p.poll() is None for p in procs):
            codes = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if codes and failed is None:
                failed = codes[0]
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
            time.sleep(0.2)
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        return 130
    codes = [p.returncode for p in procs if p.returncode != 0]
    return failed if failed is not None else (codes[0] if codes else 0)
