"""The seam for `spec.program`: what each rank runs when the job brings its own training program.

Pods, Service, hostfile, env, gang and lifecycle are the same code as for the built-in trainer; only the tail of
the launcher's command line (which runner starts which program) and a few env names differ. The launcher itself
is injected, Tekton-style: an init container from our image copies the dependency-free `llm_trainer.launch`
into an emptyDir, and the user's image runs it with its own `python3` (docs/programs.md).
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..api import LLMTrainingJob
from ..api.v1alpha1 import ProgramSpec

LAUNCHER_MOUNT = "/opt/llmtrain"  # the emptyDir the init container fills; on the program's PYTHONPATH
LAUNCHER_VOLUME = "llmtrain-launcher"
INJECT_CONTAINER = "inject-launcher"
HOSTFILE_ENV = "LLMTRAIN_HOSTFILE"
CHECKPOINT_DIR_ENV = "LLMTRAIN_CHECKPOINT_DIR"
_PYTHON = re.compile(r"^python(\d+(\.\d+)*)?$")


def is_python(command: list[str]) -> bool:
    return bool(_PYTHON.match(os.path.basename(command[0])))


def _python_tail(command: list[str], module_flag: str, no_python: list[str]) -> list[str]:
    """`python train.py a` -> `train.py a`; `python -m pkg a` -> `<module_flag> pkg a`; anything else runs as is."""
    if is_python(command) and len(command) > 1 and command[1] == "-m" and len(command) > 2:
        return [module_flag, *command[2:]]
    if is_python(command) and len(command) > 1 and not command[1].startswith("-"):
        return command[1:]
    return [*no_python, *command]


def runner_command(program: ProgramSpec, *, nodes: int, slots: int, node_rank: int, master_addr: str, master_port: int,
                   hostfile: str | None, ssh_port: int | None = None) -> list[str]:
    """The command one pod runs for its node (or, with ssh_port, worker 0 for all nodes over pdsh). hostfile None:
    one local node (`llm-train run`), whose ranks DeepSpeed counts itself."""
    command = list(program.command)
    if program.launcher == "exec":
        return command
    if program.launcher == "torchrun":
        return ["torchrun", f"--nnodes={nodes}", f"--nproc-per-node={slots}", f"--node-rank={node_rank}",
                f"--master-addr={master_addr}", f"--master-port={master_port}",
                *_python_tail(command, "-m", ["--no-python"])]
    if hostfile is None:
        cmd = ["deepspeed", f"--num_gpus={slots}"]
    else:
        cmd = ["deepspeed", f"--hostfile={hostfile}"]
        cmd += ["--launcher=pdsh", f"--ssh_port={ssh_port}"] if ssh_port else ["--no_ssh", f"--node_rank={node_rank}"]
    # DeepSpeed runs a script with the runner's own python; a non-Python command needs --no_python.
    return [*cmd, f"--master_addr={master_addr}", f"--master_port={master_port}", *_python_tail(command, "--module", ["--no_python"])]


def program_env(job: LLMTrainingJob, node_rank: int, master_addr: str, hostfile: str, checkpoint_dir: str) -> dict[str, str]:
    """What a program reads: the torch.distributed names, torchrun's PET_* names, the hostfile and checkpoint dir."""
    spec = job.spec
    shape = {"MASTER_ADDR": master_addr, "MASTER_PORT": str(spec.launcher.master_port), "NNODES": str(spec.nodes),
             "NODE_RANK": str(node_rank), "NPROC_PER_NODE": str(spec.slots_per_node)}
    return {**shape, "WORLD_SIZE": str(spec.world_size), **{f"PET_{k}": v for k, v in shape.items()},
            HOSTFILE_ENV: hostfile, CHECKPOINT_DIR_ENV: checkpoint_dir, "PYTHONPATH": LAUNCHER_MOUNT}


def inject_container(launcher_image: str, pull_policy: str, security_context: dict[str, Any]) -> dict[str, Any]:
    """Copies the stdlib-only launcher from our image into the shared emptyDir before the program's container starts."""
    return {
        "name": INJECT_CONTAINER,
        "image": launcher_image,
        "imagePullPolicy": pull_policy,
        "command": ["python3", "-m", "llm_trainer.inject", LAUNCHER_MOUNT],
        "volumeMounts": [{"name": LAUNCHER_VOLUME, "mountPath": LAUNCHER_MOUNT}],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": security_context,
    }
