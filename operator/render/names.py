"""Names, labels and owner references shared by every child object of a job."""

from __future__ import annotations

from dataclasses import dataclass

from ..api import API_VERSION, KIND, LLMTrainingJob

LABEL_PREFIX = "llmtraining.dev"
JOB_NAME_LABEL = f"{LABEL_PREFIX}/job-name"
ROLE_LABEL = f"{LABEL_PREFIX}/role"
NODE_RANK_LABEL = f"{LABEL_PREFIX}/node-rank"
# The gang's incarnation (status.restarts when it was created): a late event of an old pod is never
# taken for the new gang's.
RESTART_LABEL = f"{LABEL_PREFIX}/restart"
MANAGED_BY = "llm-training-operator"

CONFIG_MOUNT = "/etc/llmtraining"
SSH_MOUNT = "/etc/llmtraining-ssh"  # not under CONFIG_MOUNT: no mount point inside a ConfigMap volume
HOME_DIR = "/home/llm"
MARKER_DIR = "/tmp/llmtrain/markers"
TRAINER_CONTAINER = "trainer"


@dataclass(frozen=True)
class RenderContext:
    """What the render needs beyond the job itself: facts about the cluster the operator runs in."""

    cluster_domain: str = "cluster.local"
    # API group versions that serve gang objects ("scheduling.k8s.io/v1beta1", ...), discovered once at the
    # operator's start-up (kube.Kube.gang_apis); empty for `llm-operator render` (no cluster).
    gang_apis: frozenset[str] = frozenset()
    # The API server keeps PodGroup spec.schedulingConstraints.topology (gate TopologyAwareWorkloadScheduling).
    pod_group_topology: bool = False
    default_gang_scheduler: str = "auto"  # for jobs that leave spec.gang.scheduler unset; auto: see render.gang
    volcano_scheduler_name: str = "volcano"
    coscheduling_scheduler_name: str = "scheduler-plugins-scheduler"  # the scheduler-plugins chart's second scheduler
    # An image of ours (the operator's: it holds llm_trainer): program pods' init container copies the launcher from
    # it (render.program). The chart sets it to the operator's own image through LLMTO_LAUNCHER_IMAGE.
    launcher_image: str = "ghcr.io/llmtraining/operator:0.1.0"


def config_map_name(job: LLMTrainingJob) -> str:
    return f"{job.metadata.name}-config"


def service_name(job: LLMTrainingJob) -> str:
    return job.metadata.name


def ssh_secret_name(job: LLMTrainingJob) -> str:
    return f"{job.metadata.name}-ssh"


def worker_name(job: LLMTrainingJob, rank: int) -> str:
    return f"{job.metadata.name}-worker-{rank}"


def worker_fqdn(job: LLMTrainingJob, rank: int, ctx: RenderContext) -> str:
    """<pod>.<headless service>.<namespace>.svc.<domain>: resolvable thanks to hostname/subdomain."""
    return f"{worker_name(job, rank)}.{service_name(job)}.{job.metadata.namespace}.svc.{ctx.cluster_domain}"


def checkpoint_dir(job: LLMTrainingJob) -> str:
    """Where the trainer keeps checkpoint tags: <output dir>/checkpoints, the output dir being the mount."""
    return f"{job.spec.checkpoint.mount_path}/checkpoints"


def selector_labels(job: LLMTrainingJob) -> dict[str, str]:
    return {JOB_NAME_LABEL: job.metadata.name}


def labels(job: LLMTrainingJob, role: str, rank: int | None = None, restart: int | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "llm-training-job",
        "app.kubernetes.io/instance": job.metadata.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        JOB_NAME_LABEL: job.metadata.name,
        ROLE_LABEL: role,
    }
    if rank is not None:
        out[NODE_RANK_LABEL] = str(rank)
    if restart is not None:
        out[RESTART_LABEL] = str(restart)
    return out


def owner_reference(job: LLMTrainingJob) -> dict:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(job: LLMTrainingJob, name: str, role: str, rank: int | None = None, restart: int | None = None) -> dict:
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": labels(job, role, rank, restart),
        "ownerReferences": [owner_reference(job)],
    }
