"""The Helm chart and the kustomize base against the real control plane (hack/controlplane.sh).

The operator image is never pulled: kwok fakes the pods, so these tests prove what the API server decides
(admission under the restricted Pod Security Standard, scheduling, RBAC, validation), not the operator's
behaviour (tests/e2e/test_operator.py runs the operator itself).

The CRD is cluster-scoped and shared with the other e2e tests, so no test here deletes it: Helm installs
charts' crds/ only when the CRD is absent (an existing one is left as it is, whoever created it) and never
deletes it on uninstall; test_operator.py applies crds/ server-side with --force-conflicts. Both write the
same generated file, so the order does not matter. Everything else a test installs is named after its
release and removed by `helm uninstall`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from conftest import ControlPlane

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "llm-training-operator"
CRD_NAME = "llmtrainingjobs.llmtraining.dev"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# the kwok nodes are the only nodes and carry the GPU taint; the operator pod only needs to tolerate it
KWOK_VALUES = {"tolerations": [GPU_TOLERATION], "nodeSelector": {"type": "kwok"}}
MONITORING_KINDS = {"PodMonitor", "ServiceMonitor"}  # monitoring.coreos.com CRDs are not in this cluster
KUSTOMIZE_NAMESPACE = "llm-training-operator"


def helm(cp: ControlPlane, *args: str, check: bool = True, timeout: float = 180):
    return cp.run("helm", *args, check=check, timeout=timeout)



def values_file(tmp_path: Path, **values: Any) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({**KWOK_VALUES, **values}))
    return str(path)


def is_subset(desired: Any, live: Any, path: str = "") -> list[str]:
    """Where live differs from desired in a field desired sets (what GitOps tools report as drift)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return [path]
        return [d for k, v in desired.items() for d in
                ([f"{path}.{k} (missing)"] if k not in live else is_subset(v, live[k], f"{path}.{k}"))]
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [path]
        return [d for i, (a, b) in enumerate(zip(desired, live)) for d in is_subset(a, b, f"{path}[{i}]")]
    return [] if desired == live else [f"{path}: {desired!r} != {live!r}"]


@pytest.fixture
def release(control_plane: ControlPlane, namespace: str):
    name = f"ltj-{namespace[-5:]}"
    yield name
    helm(control_plane, "uninstall", name, "-n", namespace, "--wait", "--timeout", "60s", check=False)


def restricted(cp: ControlPlane, namespace: str) -> None:
    cp.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
               "pod-security.kubernetes.io/warn=restricted")


def operator_pod(cp: ControlPlane, namespace: str, release: str) -> dict:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"

    def running():
        pods = cp.get_json("-n", namespace, "pods", "-l", selector)["items"]
        return pods[0] if pods and pods[0]["status"].get("phase") == "Running" else None

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if pod := running():
            return pod
        time.sleep(1)
    events = cp.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp").stdout
    pytest.fail(f"operator pod of {release} not Running after 90s; events:\n{events}", pytrace=False)


def can_i(cp: ControlPlane, sa: str, *args: str) -> bool:
    proc = cp.kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
    return proc.stdout.strip() == "yes"


def test_helm_install_all_namespaces(control_plane: ControlPlane, namespace: str, release: str, tmp_path: Path):
    cp = control_plane
    restricted(cp, namespace)
    install = helm(cp, "install", release, str(CHART), "-n", namespace, "-f", values_file(tmp_path))
    assert "violate" not in install.stderr, install.stderr  # no Pod Security warning either

    # the CRD is there and established (created by Helm, or already by another test)
    cp.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")

    # the operator pod passed the restricted Pod Security admission and was scheduled on a kwok node
    pod = operator_pod(cp, namespace, release)
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["args"][:2] == ["run", "--all-namespaces"]
    fullname = f"{release}-llm-training-operator"
    sa = f"system:serviceaccount:{namespace}:{fullname}"
    assert pod["spec"]["serviceAccountName"] == fullname

    # RBAC from files/rbac-rules.yaml, cluster-wide
    assert can_i(cp, sa, "watch", "llmtrainingjobs.llmtraining.dev", "--all-namespaces")
    assert can_i(cp, sa, "create", "pods", "-n", "default")
    assert can_i(cp, sa, "patch", "llmtrainingjobs.llmtraining.dev", "--subresource=status", "-n", "default")
    assert can_i(cp, sa, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can_i(cp, sa, "list", "secrets", "-n", "default")
    assert can_i(cp, sa, "delete", "llmtrainingjobs.llmtraining.dev", "-n", "default")  # ttlSecondsAfterFinished
    assert not can_i(cp, sa, "update", "llmtrainingjobs.llmtraining.dev", "-n", "default")  # never rewrites a user's spec
    assert not can_i(cp, sa, "delete", "configmaps", "-n", "default")

    # a job is accepted and the schema defaults fill the spec
    cp.kubectl("-n", namespace, "apply", "-f", str(REPO / "examples" / "tiny-cpu.yaml"))
    job = cp.get_json("-n", namespace, "ltj", "tiny-cpu")
    assert job["spec"]["launcher"]["mode"] == "noSsh"
    desired = yaml.safe_load((REPO / "examples" / "tiny-cpu.yaml").read_text())
    assert is_subset(desired["spec"], job["spec"]) == []
    cp.kubectl("-n", namespace, "delete", "ltj", "tiny-cpu", "--wait=false")

    # uninstall removes everything the release made, cluster-scoped objects included, and keeps the CRD
    helm(cp, "uninstall", release, "-n", namespace, "--wait", "--timeout", "60s")
    for kind, ns in (("deployment", namespace), ("serviceaccount", namespace), ("service", namespace),
                     ("clusterrole", None), ("clusterrolebinding", None)):
        name = f"{fullname}-metrics" if kind == "service" else fullname
        where = ["-n", ns] if ns else []
        assert cp.kubectl("get", kind, name, *where, check=False).returncode != 0, f"{kind}/{name} left behind"
    cp.wait_for(lambda: not cp.get_json("-n", namespace, "pods", "-l", f"app.kubernetes.io/instance={release}")["items"],
                timeout=60, what="operator pod deleted")
    assert cp.kubectl("get", "crd", CRD_NAME, check=False).returncode == 0, "helm uninstall must keep the CRD"


def test_helm_install_watch_namespaces(control_plane: ControlPlane, namespace: str, release: str, tmp_path: Path):
    cp = control_plane
    restricted(cp, namespace)
    helm(cp, "install", release, str(CHART), "-n", namespace,
         "-f", values_file(tmp_path, watchNamespaces=[namespace], logLevel="debug"))
    pod = operator_pod(cp, namespace, release)
    args = pod["spec"]["containers"][0]["args"]
    assert f"--namespace={namespace}" in args and "--all-namespaces" not in args and "--verbose" in args
    sa = f"system:serviceaccount:{namespace}:{release}-llm-training-operator"
    assert can_i(cp, sa, "watch", "llmtrainingjobs.llmtraining.dev", "-n", namespace)
    assert can_i(cp, sa, "create", "pods", "-n", namespace)
    assert not can_i(cp, sa, "create", "pods", "-n", "default")
    assert not can_i(cp, sa, "watch", "llmtrainingjobs.llmtraining.dev", "--all-namespaces")
    assert can_i(cp, sa, "watch", "namespaces")  # Kopf's cluster rules stay cluster-wide
    helm(cp, "uninstall", release, "-n", namespace, "--wait", "--timeout", "60s")
    assert cp.kubectl("-n", namespace, "get", "role", f"{release}-llm-training-operator", check=False).returncode != 0


def test_helm_install_rejects_mistyped_values(control_plane: ControlPlane, namespace: str, release: str):
    proc = helm(control_plane, "install", release, str(CHART), "-n", namespace, "--set", "image.tga=v2", check=False)
    assert proc.returncode != 0
    assert "don't meet the specifications of the schema" in proc.stderr and "'tga' not allowed" in proc.stderr
    assert release not in helm(control_plane, "list", "-n", namespace, "-q").stdout


def test_non_default_values_pass_server_side_validation(control_plane: ControlPlane, namespace: str, tmp_path: Path):
    cp = control_plane
    other = f"{namespace}-b"
    cp.kubectl("create", "namespace", other)
    try:
        values = values_file(
            tmp_path, watchNamespaces=[namespace, other], logLevel="debug", logFormat="plain",
            clusterDomain="k8s.example", extraArgs=["--verbose"], extraEnv=[{"name": "A", "value": "b"}],
            podAnnotations={"a": "b"}, podLabels={"team": "ml"}, priorityClassName="system-cluster-critical", kueue={"enabled": True},
            image={"repository": "registry.example/op", "tag": "dev", "pullPolicy": "Always"},
            metrics={"port": 9100, "service": {"annotations": {"prometheus.io/scrape": "true"}}},
            monitoring={"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True},
                        "grafanaDashboard": {"enabled": True, "namespace": namespace}},
        )
        out = helm(cp, "template", "nondefault", str(CHART), "-n", namespace, "-f", values, "--include-crds").stdout
        objs = [o for o in yaml.safe_load_all(out) if o]
        assert {o["kind"] for o in objs} >= MONITORING_KINDS | {"Role", "RoleBinding", "ConfigMap", "Deployment"}
        checked = [o for o in objs if o["kind"] not in MONITORING_KINDS]
        proc = cp.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-",
                          input=json.dumps({"apiVersion": "v1", "kind": "List", "items": checked}))
        live = json.loads(proc.stdout)["items"]
        assert len(live) == len(checked)
        for desired, got in zip(checked, live):
            assert is_subset(desired, got) == [], f"{desired['kind']}/{desired['metadata']['name']} drifts"
    finally:
        cp.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_kustomize_base(control_plane: ControlPlane, hack_script):
    cp = control_plane
    gen = hack_script("gen-kustomize.py")
    rendered = [o for o in yaml.safe_load_all(cp.kubectl("kustomize", str(REPO / "config" / "default")).stdout) if o]
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    expected = gen.expected_objects(str(Path(cp.bin_dir) / "helm"))
    assert sorted(rendered, key=key) == sorted(expected, key=key), "config/default differs from `helm template`"

    # server-side dry run needs the namespace to exist (the Namespace object itself is only dry-run too)
    def phase() -> str | None:
        proc = cp.kubectl("get", "namespace", KUSTOMIZE_NAMESPACE, "-o", "jsonpath={.status.phase}", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    cp.wait_for(lambda: phase() != "Terminating", timeout=90, what=f"namespace {KUSTOMIZE_NAMESPACE} gone")
    created = phase() is None
    if created:
        cp.kubectl("create", "namespace", KUSTOMIZE_NAMESPACE)
    try:
        proc = cp.kubectl("apply", "-k", str(REPO / "config" / "default"), "--dry-run=server", "-o", "json")
        out = json.loads(proc.stdout)
        live = {key(o): o for o in out.get("items", [out])}
        assert set(live) == {key(o) for o in rendered}
        # no drift: the API server keeps every field the base sets as it is (defaults only add fields)
        for obj in rendered:
            assert is_subset(obj, live[key(obj)]) == [], f"{key(obj)} drifts from config/default"
    finally:
        if created:
            cp.kubectl("delete", "namespace", KUSTOMIZE_NAMESPACE, "--wait=false", check=False)
