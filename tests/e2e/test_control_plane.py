"""Proves the e2e harness: a real API server, controllers, scheduler and kwok GPU nodes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import ControlPlane

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "controlplane.sh"
EXIT_CODE_ANNOTATION = "kwok.llmtraining.dev/exit-code"
GPU_NODE_SELECTOR = "type=kwok"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pinned_k8s_version() -> str:
    match = re.search(r'^K8S_VERSION="(v[0-9.]+)"', SCRIPT.read_text(), re.M)
    assert match, "K8S_VERSION not found in hack/controlplane.sh"
    return match.group(1)


def pod_manifest(name: str, *, gpu: int = 0, tolerate: bool = True, annotations: dict | None = None,
                 containers: tuple[str, ...] = ("worker",), init_containers: tuple[str, ...] = ()) -> dict:
    def container(cname: str) -> dict:
        c = {"name": cname, "image": "registry.invalid/llm-train:test", "command": ["sleep", "infinity"]}
        if gpu:
            c["resources"] = {"limits": {"nvidia.com/gpu": str(gpu)}}
        return c

    spec: dict = {"containers": [container(c) for c in containers], "restartPolicy": "Never"}
    if init_containers:
        spec["initContainers"] = [{"name": c, "image": "registry.invalid/init:test"} for c in init_containers]
    if tolerate:
        spec["tolerations"] = [GPU_TOLERATION]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }


def get_pod(cp: ControlPlane, ns: str, name: str) -> dict:
    return cp.get_json("-n", ns, "pod", name)


def test_version_is_pinned(control_plane: ControlPlane) -> None:
    version = json.loads(control_plane.kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"] == pinned_k8s_version()
    client = json.loads(control_plane.kubectl("version", "--client", "-o", "json").stdout)
    assert client["clientVersion"]["gitVersion"] == pinned_k8s_version()


def test_fixture_env_puts_our_binaries_first(control_plane: ControlPlane) -> None:
    assert control_plane.EXIT_CODE_ANNOTATION == EXIT_CODE_ANNOTATION
    which = control_plane.run("bash", "-c", "command -v kubectl helm").stdout.split()
    assert which == [f"{control_plane.bin_dir}/kubectl", f"{control_plane.bin_dir}/helm"]
    helm = control_plane.run("helm", "version", "--short").stdout
    assert helm.startswith("v3."), helm
    # helm talks to our cluster through KUBECONFIG
    assert control_plane.run("helm", "list", "-A").returncode == 0


def test_gpu_nodes_ready(control_plane: ControlPlane) -> None:
    nodes = control_plane.get_json("nodes", "-l", GPU_NODE_SELECTOR)["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == ["kwok-gpu-0", "kwok-gpu-1", "kwok-gpu-2"]
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert node["status"]["allocatable"]["cpu"] == "32"
        assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]


def test_tolerating_gpu_pod_runs_on_kwok_node(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.apply(pod_manifest("gpu-pod", gpu=1), namespace)
    pod = control_plane.wait_for(
        lambda: (p := get_pod(control_plane, namespace, "gpu-pod"))["status"].get("phase") == "Running" and p,
        timeout=60, what="gpu-pod Running",
    )
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert pod["status"]["containerStatuses"][0]["state"]["running"]
    assert pod["status"].get("podIP")


def test_pod_without_toleration_stays_pending(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.apply(pod_manifest("no-toleration", gpu=1, tolerate=False), namespace)

    def unschedulable() -> dict | None:
        pod = get_pod(control_plane, namespace, "no-toleration")
        for cond in pod["status"].get("conditions", []):
            if cond["type"] == "PodScheduled" and cond["status"] == "False" and cond.get("reason") == "Unschedulable":
                return pod
        return None

    pod = control_plane.wait_for(unschedulable, timeout=60, what="no-toleration Unschedulable")
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


@pytest.mark.parametrize(
    ("exit_code", "phase", "reason"),
    [(0, "Succeeded", "Completed"), (137, "Failed", "Error")],
)
def test_exit_code_annotation_terminates_pod(
    control_plane: ControlPlane, namespace: str, exit_code: int, phase: str, reason: str
) -> None:
    # multi-container pod with an init container: every container gets the exit code
    control_plane.apply(
        pod_manifest("worker", gpu=1, containers=("trainer", "sidecar"), init_containers=("setup",),
                     annotations={EXIT_CODE_ANNOTATION: str(exit_code)}),
        namespace,
    )
    pod = control_plane.wait_for(
        lambda: (p := get_pod(control_plane, namespace, "worker"))["status"].get("phase") == phase and p,
        timeout=60, what=f"worker {phase}",
    )
    statuses = pod["status"]["containerStatuses"]
    assert sorted(s["name"] for s in statuses) == ["sidecar", "trainer"]
    for status in statuses:
        terminated = status["state"]["terminated"]
        assert terminated["exitCode"] == exit_code
        assert terminated["reason"] == reason
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_exit_code_annotation_added_to_running_pod(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.apply(pod_manifest("late-exit", gpu=1), namespace)
    control_plane.wait_for(
        lambda: get_pod(control_plane, namespace, "late-exit")["status"].get("phase") == "Running",
        timeout=60, what="late-exit Running",
    )
    control_plane.kubectl("-n", namespace, "annotate", "pod", "late-exit", f"{EXIT_CODE_ANNOTATION}=3")
    pod = control_plane.wait_for(
        lambda: (p := get_pod(control_plane, namespace, "late-exit"))["status"].get("phase") == "Failed" and p,
        timeout=60, what="late-exit Failed",
    )
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_garbage_collector_deletes_orphaned_dependents(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("-n", namespace, "create", "configmap", "owner", "--from-literal=a=b")
    owner_uid = control_plane.get_json("-n", namespace, "configmap", "owner")["metadata"]["uid"]
    control_plane.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
                ],
            },
            "data": {"x": "y"},
        },
        namespace,
    )
    control_plane.kubectl("-n", namespace, "delete", "configmap", "owner", "--wait=true")
    control_plane.wait_for(
        lambda: control_plane.kubectl("-n", namespace, "get", "configmap", "dependent", check=False).returncode != 0,
        timeout=60, what="garbage collection of the dependent ConfigMap",
    )


def test_pod_security_admission_rejects_privileged_pod(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    manifest = pod_manifest("privileged")
    manifest["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    proc = control_plane.kubectl("-n", namespace, "create", "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode != 0
    assert "violates PodSecurity" in proc.stderr, proc.stderr


def test_rbac_denies_unbound_service_account(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("-n", namespace, "create", "serviceaccount", "nobody")
    as_sa = f"--as=system:serviceaccount:{namespace}:nobody"
    denied = control_plane.kubectl("auth", "can-i", "list", "pods", "-n", namespace, as_sa, check=False)
    assert denied.returncode != 0 and denied.stdout.strip() == "no", (denied.stdout, denied.stderr)
    # an actual request is forbidden too
    forbidden = control_plane.kubectl("-n", namespace, "get", "pods", as_sa, check=False)
    assert forbidden.returncode != 0 and "forbidden" in forbidden.stderr.lower(), forbidden.stderr
    # and a RoleBinding grants it: RBAC is doing the deciding
    control_plane.kubectl("-n", namespace, "create", "role", "pod-reader", "--verb=list", "--resource=pods")
    control_plane.kubectl("-n", namespace, "create", "rolebinding", "nobody-reads", "--role=pod-reader",
                          f"--serviceaccount={namespace}:nobody")
    allowed = control_plane.wait_for(
        lambda: control_plane.kubectl("auth", "can-i", "list", "pods", "-n", namespace, as_sa,
                                      check=False).stdout.strip() == "yes",
        timeout=30, what="RoleBinding to take effect",
    )
    assert allowed
