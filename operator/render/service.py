"""The headless Service that gives every worker pod a stable DNS name."""

from __future__ import annotations

from ..api import LLMTrainingJob
from .names import object_meta, selector_labels, service_name


def build_service(job: LLMTrainingJob) -> dict:
    spec = job.spec
    ports = [
        {"name": "rendezvous", "port": spec.launcher.master_port, "targetPort": spec.launcher.master_port, "protocol": "TCP"},
        {"name": "metrics", "port": spec.monitoring.port, "targetPort": spec.monitoring.port, "protocol": "TCP"},
    ]
    if spec.launcher.mode == "ssh":
        ports.append({"name": "ssh", "port": spec.launcher.ssh_port, "targetPort": spec.launcher.ssh_port, "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(job, service_name(job), role="service"),
        "spec": {
            "clusterIP": "None",
            # Peers must resolve each other before they are Ready: the rendezvous happens during startup.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(job),
            "ports": ports,
        },
    }
