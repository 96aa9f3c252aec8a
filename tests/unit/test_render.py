"""The render: every child object a DeepSpeed gang needs, as a pure function of the job."""

import json
import subprocess
import sys

import pytest
import yaml

from llm_operator.api import parse_job
from llm_operator.render import RenderContext, render_children
from llm_operator.render.network import plan_network

CTX = RenderContext()


def kinds(children):
    return [(c["kind"], c["metadata"]["name"]) for c in children]


def pods(children):
    return [c for c in children if c["kind"] == "Pod"]


def by_kind(children, kind):
    (obj,) = [c for c in children if c["kind"] == kind]
    return obj


def trainer(pod):
    (container,) = pod["spec"]["containers"]
    return container


def env_of(pod):
    return {e["name"]: e.get("value") for e in trainer(pod)["env"]}


def test_children_of_a_nossh_job(manifest):
    children = render_children(parse_job(manifest), CTX)
    assert kinds(children) == [
        ("ConfigMap", "demo-config"),
        ("Service", "demo"),
        ("Pod", "demo-worker-0"),
        ("Pod", "demo-worker-1"),
    ]


def test_every_child_is_owned_and_labelled(manifest):
    for child in render_children(parse_job(manifest), CTX):
        meta = child["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "llmtraining.dev/v1alpha1",
                "kind": "LLMTrainingJob",
                "name": "demo",
                "uid": "0b5c1e5e-1111-2222-3333-444455556666",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["llmtraining.dev/job-name"] == "demo"
        assert meta["labels"]["llmtraining.dev/role"]


def test_hostfile_lists_workers_in_rank_order(manifest):
    config = by_kind(render_children(parse_job(manifest), CTX), "ConfigMap")
    assert config["data"]["hostfile"] == (
        "demo-worker-0.demo.team-a.svc.cluster.local slots=4\n"
        "demo-worker-1.demo.team-a.svc.cluster.local slots=4\n"
    )


def test_cluster_domain_is_configurable(manifest):
    config = by_kind(render_children(parse_job(manifest), RenderContext(cluster_domain="corp.internal")), "ConfigMap")
    assert config["data"]["hostfile"].startswith("demo-worker-0.demo.team-a.svc.corp.internal slots=4\n")


def test_config_map_carries_deepspeed_config_and_job(manifest):
    data = by_kind(render_children(parse_job(manifest), CTX), "ConfigMap")["data"]
    ds = json.loads(data["ds_config.json"])
    assert ds["train_batch_size"] == 32
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 1.0
    job = yaml.safe_load(data["job.yaml"])
    assert job["kind"] == "LLMTrainingJob"
    assert job["spec"]["training"]["steps"] == 10
    assert parse_job(job).spec == parse_job(manifest).spec  # the trainer reads back exactly the spec


def test_headless_service_publishes_not_ready_addresses(manifest):
    service = by_kind(render_children(parse_job(manifest), CTX), "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"llmtraining.dev/job-name": "demo"}


def test_pods_resolve_through_hostname_and_subdomain(manifest):
    for rank, pod in enumerate(pods(render_children(parse_job(manifest), CTX))):
        assert pod["metadata"]["labels"]["llmtraining.dev/node-rank"] == str(rank)
        assert pod["spec"]["hostname"] == f"demo-worker-{rank}"
        assert pod["spec"]["subdomain"] == "demo"
        assert pod["spec"]["restartPolicy"] == "Never"


def test_nossh_command_per_rank(manifest):
    worker1 = pods(render_children(parse_job(manifest), CTX))[1]
    command = trainer(worker1)["command"]
    launch, deepspeed = command[: command.index("--")], command[command.index("--") + 1 :]
    assert launch[:2] == ["llm-train", "launch"]
    # waits for every peer's name before launching
    waits = [launch[i + 1] for i, a in enumerate(launch) if a == "--wait-dns"]
    assert waits == ["demo-worker-0.demo.team-a.svc.cluster.local", "demo-worker-1.demo.team-a.svc.cluster.local"]
    assert launch[launch.index("--timeout") + 1] == "600"
    assert deepspeed[:3] == ["deepspeed", "--hostfile=/etc/llmtraining/hostfile", "--no_ssh"]
    assert "--node_rank=1" in deepspeed
    assert "--master_addr=demo-worker-0.demo.team-a.svc.cluster.local" in deepspeed
    assert "--master_port=29500" in deepspeed
    assert deepspeed[deepspeed.index("--module") + 1] == "llm_trainer.worker"


def test_ssh_mode(manifest):
    manifest["spec"]["launcher"] = {"mode": "ssh"}
    manifest["spec"]["podTemplate"] = {"env": [{"name": "WANDB_MODE", "value": "offline"}]}
    keys = {"id_ed25519": "PRIVATE", "authorized_keys": "ssh-ed25519 AAAA"}
    children = render_children(parse_job(manifest), CTX, ssh_keys=keys)
    assert ("Secret", "demo-ssh") in kinds(children)
    secret = by_kind(children, "Secret")
    assert secret["stringData"] == keys
    launcher, worker = pods(children)
    launcher_cmd = trainer(launcher)["command"]
    deepspeed = launcher_cmd[launcher_cmd.index("--") + 1 :]
    assert "--launcher=pdsh" in deepspeed and "--ssh_port=2222" in deepspeed
    assert "--no_ssh" not in deepspeed and not any(a.startswith("--node_rank") for a in deepspeed)
    # the launcher waits for every worker's sshd
    waits = [launcher_cmd[i + 1] for i, a in enumerate(launcher_cmd) if a == "--wait-tcp"]
    assert waits == ["demo-worker-0.demo.team-a.svc.cluster.local:2222", "demo-worker-1.demo.team-a.svc.cluster.local:2222"]
    assert trainer(worker)["command"] == ["llm-train", "launch", "--sshd", "--ssh-secret-dir=/etc/llmtraining-ssh", "--ssh-port=2222", "--sshd-only"]
    assert launcher_cmd[:5] == ["llm-train", "launch", "--sshd", "--ssh-secret-dir=/etc/llmtraining-ssh", "--ssh-port=2222"]
    for pod in (launcher, worker):
        (ssh_volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "ssh"]
        assert ssh_volume["secret"] == {"secretName": "demo-ssh", "defaultMode": 0o440}
        (mount,) = [m for m in trainer(pod)["volumeMounts"] if m["name"] == "ssh"]
        assert mount["readOnly"] is True
        assert {"name": "ssh", "containerPort": 2222, "protocol": "TCP"} in trainer(pod)["ports"]
    # env pdsh would not forward travels in .deepspeed_env
    env_file = by_kind(children, "ConfigMap")["data"]["deepspeed_env"]
    assert "WANDB_MODE=offline\n" in env_file
    assert env_of(launcher)["DS_ENV_FILE"] == "/etc/llmtraining/deepspeed_env"


def test_render_placeholder_keys_never_leak_material(manifest):
    manifest["spec"]["launcher"] = {"mode": "ssh"}
    secret = by_kind(render_children(parse_job(manifest), CTX), "Secret")
    assert set(secret["stringData"].values()) == {"<generated per job by the operator>"}


def test_security_defaults(manifest):
    for pod in pods(render_children(parse_job(manifest), CTX)):
        pod_sc = pod["spec"]["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 1000
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = trainer(pod)["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert "hostNetwork" not in pod["spec"]


def test_gpu_resources_and_toleration(manifest):
    pod = pods(render_children(parse_job(manifest), CTX))[0]
    assert trainer(pod)["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]


def test_cpu_accelerator(manifest):
    manifest["spec"]["accelerator"] = "cpu"
    pod = pods(render_children(parse_job(manifest), CTX))[0]
    assert "nvidia.com/gpu" not in trainer(pod)["resources"].get("limits", {})
    assert "tolerations" not in pod["spec"]
    assert env_of(pod)["DS_ACCELERATOR"] == "cpu"


def test_shm_is_memory_backed(manifest):
    manifest["spec"]["network"] = {"shmSize": "32Gi"}
    pod = pods(render_children(parse_job(manifest), CTX))[0]
    (dshm,) = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
    assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in trainer(pod)["volumeMounts"]


PROFILES = {
    "tcp": ({"NCCL_IB_DISABLE": "1"}, [], {}),
    "infiniband": ({"NCCL_IB_DISABLE": "0", "NCCL_IB_HCA": "mlx5_0,mlx5_1"}, ["IPC_LOCK"], {"rdma/rdma_shared_device_a": 1}),
    "roce": ({"NCCL_IB_DISABLE": "0", "NCCL_IB_HCA": "mlx5_0,mlx5_1", "NCCL_IB_GID_INDEX": "3"}, ["IPC_LOCK"], {"rdma/rdma_shared_device_a": 1}),
    "efa": ({"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1"}, ["IPC_LOCK"], {"vpc.amazonaws.com/efa": 1}),
}


@pytest.mark.parametrize("mode", ["noSsh", "ssh"])
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_network_profile_reaches_every_rank(manifest, profile, mode):
    manifest["spec"]["launcher"] = {"mode": mode}
    manifest["spec"]["network"] = {"profile": profile, "interfaces": ["eth0"], "ibHcas": ["mlx5_0", "mlx5_1"], "ncclEnv": {"NCCL_DEBUG": "INFO"}}
    expected_env, caps, resources = PROFILES[profile]
    expected_env = {**expected_env, "NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0", "NCCL_DEBUG": "INFO"}
    children = render_children(parse_job(manifest), CTX)
    env_file = by_kind(children, "ConfigMap")["data"]["deepspeed_env"]
    for pod in pods(children):
        env = env_of(pod)
        for name, value in expected_env.items():
            assert env[name] == value, name
            if mode == "ssh":  # ranks started over pdsh get it from .deepspeed_env
                assert f"{name}={value}\n" in env_file
        assert trainer(pod)["securityContext"]["capabilities"].get("add", []) == caps
        for resource, count in resources.items():
            assert trainer(pod)["resources"]["limits"][resource] == str(count)


def test_user_nccl_env_wins_over_profile(manifest):
    manifest["spec"]["network"] = {"profile": "roce", "ncclEnv": {"NCCL_IB_GID_INDEX": "1"}}
    assert plan_network(parse_job(manifest).spec.network).env["NCCL_IB_GID_INDEX"] == "1"


def test_host_network(manifest):
    manifest["spec"]["network"] = {"hostNetwork": True}
    pod = pods(render_children(parse_job(manifest), CTX))[0]
    assert pod["spec"]["hostNetwork"] is True
    assert pod["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_pod_template_is_merged(manifest):
    manifest["spec"]["podTemplate"] = {
        "labels": {"team": "x", "llmtraining.dev/job-name": "spoofed"},
        "annotations": {"a": "b"},
        "nodeSelector": {"pool": "h100"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "priorityClassName": "high",
        "schedulerName": "volcano",
        "serviceAccountName": "trainer",
        "volumes": [{"name": "extra", "emptyDir": {}}],
        "volumeMounts": [{"name": "extra", "mountPath": "/extra"}],
        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    }
    pod = pods(render_children(parse_job(manifest), CTX))[0]
    assert pod["metadata"]["labels"]["team"] == "x"
    assert pod["metadata"]["labels"]["llmtraining.dev/job-name"] == "demo"  # ours win
    assert pod["metadata"]["annotations"] == {"a": "b"}
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"pool": "h100"}
    assert spec["tolerations"][0]["key"] == "dedicated" and len(spec["tolerations"]) == 2
    assert (spec["priorityClassName"], spec["schedulerName"], spec["serviceAccountName"]) == ("high", "volcano", "trainer")
    assert {"name": "extra", "emptyDir": {}} in spec["volumes"]
    assert {"name": "extra", "mountPath": "/extra"} in trainer(pod)["volumeMounts"]
    assert {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}} in trainer(pod)["env"]


def test_data_and_checkpoint_volumes(manifest):
    manifest["spec"]["data"] = {"format": "tokens", "paths": ["*.bin"], "volume": {"persistentVolumeClaim": {"claimName": "corpus"}}}
    manifest["spec"]["checkpoint"] = {"volume": {"persistentVolumeClaim": {"claimName": "ckpt"}}}
    pod = pods(render_children(parse_job(manifest), CTX))[0]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "corpus"}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "ckpt"}
    mounts = {m["name"]: m for m in trainer(pod)["volumeMounts"]}
    assert mounts["data"] == {"name": "data", "mountPath": "/data", "readOnly": True}
    assert mounts["checkpoints"]["mountPath"] == "/checkpoints"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llm_operator.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("example", ["tiny-cpu.yaml", "gpt2-1.3b-multinode.yaml", "ssh-launcher.yaml"])
def test_examples_render(repo, example):
    result = run_cli("render", "-f", str(repo / "examples" / example))
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    job = yaml.safe_load((repo / "examples" / example).read_text())
    assert len([d for d in documents if d["kind"] == "Pod"]) == job["spec"].get("nodes", 1)


def test_render_cli_rejects_invalid_manifest_with_exit_2(tmp_path, manifest):
    manifest["spec"]["training"]["globalBatchSize"] = 33
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = run_cli("render", "-f", str(path))
    assert result.returncode == 2
    assert "spec: training.globalBatchSize (33) must be divisible" in result.stderr
    assert result.stdout == ""


def test_render_cli_rejects_too_long_name(tmp_path, manifest):
    manifest["metadata"]["name"] = "x" * 60
    del manifest["spec"]["training"]["globalBatchSize"]
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = run_cli("render", "-f", str(path))
    assert result.returncode == 2
    assert "metadata.name is too long" in result.stderr


@pytest.mark.parametrize("mode", ["noSsh", "ssh"])
def test_rendered_commands_parse_with_the_real_entrypoints(manifest, mode):
    """Contract: what the pods run is accepted, flag for flag, by llm-train launch, deepspeed and the worker."""
    from deepspeed.launcher.runner import parse_args as deepspeed_parse_args

    from llm_trainer.launch import parse_args as launch_parse_args
    from llm_trainer.worker import parse_args as worker_parse_args

    manifest["spec"]["launcher"] = {"mode": mode}
    for pod in pods(render_children(parse_job(manifest), CTX)):
        command = trainer(pod)["command"]
        assert command[:2] == ["llm-train", "launch"]
        launch = launch_parse_args(command[2:])
        if not launch.command:  # ssh workers 1..N-1 only run sshd
            assert mode == "ssh" and launch.sshd_only and launch.ssh_secret_dir == "/etc/llmtraining-ssh"
            continue
        assert launch.command[0] == "deepspeed"
        runner = deepspeed_parse_args(launch.command[1:])
        assert runner.module and runner.user_script == "llm_trainer.worker"
        worker = worker_parse_args(runner.user_args)
        assert worker.job == "/etc/llmtraining/job.yaml" and worker.deepspeed_config == "/etc/llmtraining/ds_config.json"
        assert worker.output_dir == "/checkpoints" and worker.checkpoint_dir == "/checkpoints/checkpoints"
        assert launch.marker_dir == "/tmp/llmtrain/markers"
        if mode == "ssh":
            assert launch.sshd and launch.ssh_secret_dir == "/etc/llmtraining-ssh" and runner.launcher == "pdsh"
        else:
            assert runner.no_ssh and runner.node_rank == int(pod["metadata"]["labels"]["llmtraining.dev/node-rank"])



def test_the_job_manifest_is_the_text_pyyamls_own_emitter_writes(manifest, monkeypatch):
    """config.py writes job.yaml with libyaml's emitter (speed, issue 22): the same text as the pure-Python one."""
    from llm_operator.render import config

    manifest["spec"]["training"]["learningRate"] = 3e-4
    manifest["spec"]["podTemplate"] = {"annotations": {"note": "a: b # not a comment", "multi": "line one\nline two", "empty": ""}}
    job = parse_job(manifest)
    assert config._DUMPER is yaml.CSafeDumper
    fast = config.build_job_manifest(job)
    monkeypatch.setattr(config, "_DUMPER", yaml.SafeDumper)
    assert fast == config.build_job_manifest(job)
