"""The render's seam for spec.program: the same pods, a different tail of the launcher's command (issue 18)."""

from __future__ import annotations

import pytest

from llm_operator.api import parse_job
from llm_operator.render import RenderContext, render_children

FQDN0 = "sft-worker-0.sft.team.svc.cluster.local"


def program_job(command, launcher="deepspeed", mode="noSsh", **program) -> dict:
    return {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": "sft", "namespace": "team"},
            "spec": {"image": "team/sft:3", "nodes": 2, "slotsPerNode": 2, "accelerator": "cpu", "launcher": {"mode": mode},
                     "program": {"command": command, "launcher": launcher, **program}}}


def worker(manifest: dict, rank: int, ctx: RenderContext | None = None) -> dict:
    pods = [c for c in render_children(parse_job(manifest), ctx or RenderContext()) if c["kind"] == "Pod"]
    return pods[rank]


def after_dashes(command: list[str]) -> list[str]:
    return command[command.index("--") + 1:]


@pytest.mark.parametrize("command, launcher, rank, expected", [
    (["python", "train.py", "--lr", "1e-3"], "deepspeed", 1,
     ["deepspeed", "--hostfile=/etc/llmtraining/hostfile", "--no_ssh", "--node_rank=1", f"--master_addr={FQDN0}",
      "--master_port=29500", "train.py", "--lr", "1e-3"]),
    (["python3", "-m", "pkg.train", "x"], "deepspeed", 0,
     ["deepspeed", "--hostfile=/etc/llmtraining/hostfile", "--no_ssh", "--node_rank=0", f"--master_addr={FQDN0}",
      "--master_port=29500", "--module", "pkg.train", "x"]),
    (["bash", "run.sh"], "deepspeed", 0,
     ["deepspeed", "--hostfile=/etc/llmtraining/hostfile", "--no_ssh", "--node_rank=0", f"--master_addr={FQDN0}",
      "--master_port=29500", "--no_python", "bash", "run.sh"]),
    (["python", "train.py"], "torchrun", 1,
     ["torchrun", "--nnodes=2", "--nproc-per-node=2", "--node-rank=1", f"--master-addr={FQDN0}", "--master-port=29500", "train.py"]),
    (["/usr/bin/env", "x"], "torchrun", 0,
     ["torchrun", "--nnodes=2", "--nproc-per-node=2", "--node-rank=0", f"--master-addr={FQDN0}", "--master-port=29500",
      "--no-python", "/usr/bin/env", "x"]),
    (["accelerate", "launch", "--num_machines", "$(NNODES)", "--machine_rank", "$(NODE_RANK)", "t.py"], "exec", 1,
     ["accelerate", "launch", "--num_machines", "$(NNODES)", "--machine_rank", "$(NODE_RANK)", "t.py"]),
])
def test_each_launcher_runs_the_program_on_every_rank(command, launcher, rank, expected):
    container = worker(program_job(command, launcher), rank)["spec"]["containers"][0]
    assert after_dashes(container["command"]) == expected
    # the image needs python3 only: the launcher is the injected one, and a missing command fails fast (exit 5)
    assert container["command"][:3] == ["python3", "-m", "llm_trainer.launch"]
    assert ["--check-command", expected[0]] == container["command"][container["command"].index("--check-command"):][:2]
    assert "--marker-dir" not in container["command"]
    # the pod's progress receiver (KubeflowCallback, llmtraining_report) serves the llmtrain_* series on monitoring.port
    assert container["command"][container["command"].index("--progress-port") + 1] == "29600"


def test_the_program_gets_the_gang_shape_in_torchrun_names_and_ours():
    env = {e["name"]: e.get("value") for e in worker(program_job(["python", "t.py"]), 1)["spec"]["containers"][0]["env"]}
    assert {k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "WORLD_SIZE")} == {
        "MASTER_ADDR": FQDN0, "MASTER_PORT": "29500", "NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "2", "WORLD_SIZE": "4"}
    assert env["PET_NNODES"] == "2" and env["PET_NODE_RANK"] == "1" and env["PET_MASTER_ADDR"] == FQDN0
    assert env["LLMTRAIN_HOSTFILE"] == "/etc/llmtraining/hostfile"
    assert env["LLMTRAIN_CHECKPOINT_DIR"] == "/checkpoints/checkpoints"  # on checkpoint.volume, shared by the gang
    assert env["LLMTRAIN_RESTART"] == "0" and env["PYTHONPATH"] == "/opt/llmtrain"


def test_the_launcher_is_injected_by_an_init_container_from_our_image():
    pod = worker(program_job(["python", "t.py"], workingDir="/workspace"), 0, RenderContext(launcher_image="ours/trainer:7"))
    (init,) = pod["spec"]["initContainers"]
    assert init["image"] == "ours/trainer:7" and init["command"] == ["python3", "-m", "llm_trainer.inject", "/opt/llmtrain"]
    assert init["securityContext"]["runAsNonRoot"] and init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "llmtrain-launcher", "emptyDir": {}} in pod["spec"]["volumes"]
    container = pod["spec"]["containers"][0]
    assert {"name": "llmtrain-launcher", "mountPath": "/opt/llmtrain", "readOnly": True} in container["volumeMounts"]
    assert container["workingDir"] == "/workspace" and container["image"] == "team/sft:3"


def test_ssh_mode_runs_the_deepspeed_runner_over_pdsh_on_worker_0_only():
    manifest = program_job(["python", "t.py"], mode="ssh")
    assert after_dashes(worker(manifest, 0)["spec"]["containers"][0]["command"])[:3] == [
        "deepspeed", "--hostfile=/etc/llmtraining/hostfile", "--launcher=pdsh"]
    assert worker(manifest, 1)["spec"]["containers"][0]["command"][-1] == "--sshd-only"


def test_a_builtin_job_has_no_init_container_and_keeps_llm_train_launch(manifest):
    pod = [c for c in render_children(parse_job(manifest)) if c["kind"] == "Pod"][0]
    assert "initContainers" not in pod["spec"] and pod["spec"]["containers"][0]["command"][:2] == ["llm-train", "launch"]
