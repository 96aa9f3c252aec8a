"""Worker pods: one per node rank, each running the in-pod entrypoint `llm-train launch`."""

from __future__ import annotations

from typing import Any

from ..api import LLMTrainingJob
from ..api.contract import FINAL_SCRAPE_ENV, RESTART_ENV
from .env import static_env
from .names import (
    CONFIG_MOUNT,
    HOME_DIR,
    MARKER_DIR,
    SSH_MOUNT,
    TRAINER_CONTAINER,
    RenderContext,
    checkpoint_dir,
    config_map_name,
    object_meta,
    service_name,
    ssh_secret_name,
    worker_fqdn,
    worker_name,
)
from .gang import plan_gang, pod_gang_fields
from .network import plan_network
from .program import LAUNCHER_MOUNT, LAUNCHER_VOLUME, inject_container, program_env, runner_command
from .resources import GPU_RESOURCE, container_resources

HOSTFILE = f"{CONFIG_MOUNT}/hostfile"
JOB_FILE = f"{CONFIG_MOUNT}/job.yaml"
DS_CONFIG_FILE = f"{CONFIG_MOUNT}/ds_config.json"
DS_ENV_FILE = f"{CONFIG_MOUNT}/deepspeed_env"


def rank_command(job: LLMTrainingJob, rank: int, ctx: RenderContext) -> list[str]:
    """The seam: what this pod's ranks run, through which runner: our worker, or the job's own program."""
    spec = job.spec
    if spec.program is None:
        return deepspeed_command(job, rank, ctx)
    return runner_command(spec.program, nodes=spec.nodes, slots=spec.slots_per_node, node_rank=rank,
                          master_addr=worker_fqdn(job, 0, ctx), master_port=spec.launcher.master_port, hostfile=HOSTFILE,
                          ssh_port=spec.launcher.ssh_port if spec.launcher.mode == "ssh" and spec.program.launcher == "deepspeed" else None)


def launcher_entrypoint(job: LLMTrainingJob) -> list[str]:
    """Our image has `llm-train`; a program's image has only python3 and the injected, stdlib-only launcher."""
    return ["llm-train", "launch"] if job.spec.program is None else ["python3", "-m", "llm_trainer.launch"]


def deepspeed_command(job: LLMTrainingJob, rank: int, ctx: RenderContext) -> list[str]:
    """DeepSpeed's runner: in noSsh mode for this pod's node_rank only, in ssh mode for all nodes over pdsh."""
    spec = job.spec
    cmd = ["deepspeed", f"--hostfile={HOSTFILE}"]
    if spec.launcher.mode == "noSsh":
        # Without --master_addr DeepSpeed falls back to ssh to discover it (DeepSpeed >= 0.14.5).
        cmd += ["--no_ssh", f"--node_rank={rank}"]
    else:
        cmd += ["--launcher=pdsh", f"--ssh_port={spec.launcher.ssh_port}"]
    cmd += [
        f"--master_addr={worker_fqdn(job, 0, ctx)}",
        f"--master_port={spec.launcher.master_port}",
        "--module", "llm_trainer.worker",
        "--job", JOB_FILE,
        "--deepspeed-config", DS_CONFIG_FILE,
        "--output-dir", spec.checkpoint.mount_path,
        "--checkpoint-dir", checkpoint_dir(job),
    ]
    return cmd


def launch_command(job: LLMTrainingJob, rank: int, ctx: RenderContext) -> list[str]:
    """`llm-train launch` waits until the peers this pod needs are reachable, then runs DeepSpeed."""
    spec = job.spec
    entry = launcher_entrypoint(job)
    peers = [worker_fqdn(job, peer, ctx) for peer in range(spec.nodes)]
    timeout = ["--timeout", str(spec.launcher.peer_timeout_seconds)]
    if spec.launcher.mode == "ssh":
        sshd = ["--sshd", f"--ssh-secret-dir={SSH_MOUNT}", f"--ssh-port={spec.launcher.ssh_port}"]
        if rank > 0:  # only sshd: worker 0 starts this node's ranks over ssh
            return [*entry, *sshd, "--sshd-only"]
        waits = [arg for peer in peers for arg in ("--wait-tcp", f"{peer}:{spec.launcher.ssh_port}")]
    else:
        # Every pod waits for every name: a missing peer then fails the whole gang fast, by name,
        # instead of hanging in the rendezvous until torch's timeout.
        waits = [arg for peer in peers for arg in ("--wait-dns", peer)]
    command = rank_command(job, rank, ctx)
    # Our worker writes the completion marker; a program's own exit status is its truth. A command missing
    # from the image fails at once (exit 5), not after the peers' wait and a restart.
    tail = ["--marker-dir", MARKER_DIR] if spec.program is None else [
        "--check-command", command[0], "--progress-port", str(spec.monitoring.port)]
    if spec.program is not None and command[0] != spec.program.command[0]:
        tail += ["--check-command", spec.program.command[0]]
    return [*entry, *(sshd if spec.launcher.mode == "ssh" else []), *waits, *timeout, *tail, "--", *command]


def _env(job: LLMTrainingJob, rank: int, restart: int, ctx: RenderContext) -> list[dict]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in static_env(job).items()]
    if job.spec.program is not None:
        env += [{"name": k, "value": v} for k, v in
                program_env(job, rank, worker_fqdn(job, 0, ctx), HOSTFILE, checkpoint_dir(job)).items()]
    env += [
        {"name": "LLMTRAIN_NODE_RANK", "value": str(rank)},
        {"name": RESTART_ENV, "value": str(restart)},
        {"name": FINAL_SCRAPE_ENV, "value": str(job.spec.monitoring.final_scrape_seconds)},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    if job.spec.launcher.mode == "ssh":
        env.append({"name": "DS_ENV_FILE", "value": DS_ENV_FILE})
    literal = {var["name"] for var in env}
    env += [var for var in job.spec.pod_template.env if var.get("name") not in literal]  # valueFrom entries
    return env


def _volumes(job: LLMTrainingJob) -> tuple[list[dict], list[dict]]:
    spec = job.spec
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(job)}},
        {"name": "home", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.network.shm_size}},
        {"name": "checkpoints", **(spec.checkpoint.volume or {"emptyDir": {}})},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "home", "mountPath": HOME_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "checkpoints", "mountPath": spec.checkpoint.mount_path},
    ]
    if spec.launcher.mode == "ssh":
        # 0440 + fsGroup: readable by the non-root trainer; sshd runs with StrictModes off for these.
        volumes.append({"name": "ssh", "secret": {"secretName": ssh_secret_name(job), "defaultMode": 0o440}})
        mounts.append({"name": "ssh", "mountPath": SSH_MOUNT, "readOnly": True})
    if spec.data.volume:
        volumes.append({"name": "data", **spec.data.volume})
        mounts.append({"name": "data", "mountPath": spec.data.mount_path, "readOnly": True})
    volumes += spec.pod_template.volumes
    mounts += spec.pod_template.volume_mounts
    return volumes, mounts


def _ports(job: LLMTrainingJob) -> list[dict]:
    spec = job.spec
    ports = [
        {"name": "rendezvous", "containerPort": spec.launcher.master_port, "protocol": "TCP"},
        {"name": "metrics", "containerPort": spec.monitoring.port, "protocol": "TCP"},
    ]
    if spec.launcher.mode == "ssh":
        ports.append({"name": "ssh", "containerPort": spec.launcher.ssh_port, "protocol": "TCP"})
    return ports


def _tolerations(job: LLMTrainingJob) -> list[dict]:
    tolerations = list(job.spec.pod_template.tolerations)
    if job.spec.accelerator == "gpu":  # GPU nodes are conventionally tainted nvidia.com/gpu
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def build_worker_pod(job: LLMTrainingJob, rank: int, ctx: RenderContext, restart: int = 0) -> dict:
    """restart: the gang's incarnation (status.restarts); the pod's name stays the same across restarts."""
    spec = job.spec
    tmpl = spec.pod_template
    meta = object_meta(job, worker_name(job, rank), role="worker", rank=rank, restart=restart)
    gang = pod_gang_fields(job, plan_gang(job, ctx), ctx)
    meta["labels"] = {**tmpl.labels, **meta["labels"], **gang.labels}
    if tmpl.annotations or gang.annotations:
        meta["annotations"] = {**tmpl.annotations, **gang.annotations}
    volumes, mounts = _volumes(job)
    network = plan_network(spec.network)
    capabilities: dict = {"drop": ["ALL"]}
    if network.capabilities:
        capabilities["add"] = network.capabilities
    container = {
        "name": TRAINER_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": tmpl.image_pull_policy,
        "command": launch_command(job, rank, ctx),
        "workingDir": (spec.program and spec.program.working_dir) or HOME_DIR,
        "env": _env(job, rank, restart, ctx),
        "ports": _ports(job),
        "resources": container_resources(job, network),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": capabilities,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.program is not None:
        volumes.append({"name": LAUNCHER_VOLUME, "emptyDir": {}})
        mounts.append({"name": LAUNCHER_VOLUME, "mountPath": LAUNCHER_MOUNT, "readOnly": True})
    pod_spec: dict = {
        "hostname": worker_name(job, rank),
        "subdomain": service_name(job),
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": tmpl.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": tmpl.run_as_user,
            "runAsGroup": tmpl.run_as_group,
            "fsGroup": tmpl.fs_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if spec.program is not None:
        security = {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        pod_spec["initContainers"] = [inject_container(ctx.launcher_image, tmpl.image_pull_policy, {**security, "capabilities": {"drop": ["ALL"]}})]
    if spec.network.host_network:
        pod_spec["hostNetwork"] = True
        pod_spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    optional = {
        "nodeSelector": tmpl.node_selector,
        "tolerations": _tolerations(job),
        "affinity": tmpl.affinity,
        "priorityClassName": tmpl.priority_class_name,
        "schedulerName": tmpl.scheduler_name,
        "serviceAccountName": tmpl.service_account_name,
        "imagePullSecrets": tmpl.image_pull_secrets,
    }
    pod_spec.update({k: v for k, v in optional.items() if v})
    pod_spec.update(gang.spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
