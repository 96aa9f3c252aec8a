"""The operator on a real control plane: CRD, reconcile, status, garbage collection, restarts.

The operator runs as a subprocess (`llm-operator run`) under a ServiceAccount bound to exactly the
rules the Helm chart ships (charts/llm-training-operator/files/rbac-rules.yaml), never as admin.
Tests observe it only through the API server, with kubectl.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "charts" / "llm-training-operator" / "files" / "rbac-rules.yaml"
OPERATOR_NS = "llm-operator-e2e"
OPERATOR_SA = "llm-training-operator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """`llm-operator run` as a child process, restartable and killable like a real pod."""

    def __init__(self, control_plane, kubeconfig: str, log_dir: Path):
        self.cp = control_plane
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.health_port = free_port()
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        self.log_path = self.log_dir / f"operator-{self.starts}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llm_operator.cli", "run", "--all-namespaces", "--health-port", str(self.health_port), "--log-format", "plain", "--metrics-port", "0", "--progress-interval", "1", "-v"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        self.cp.wait_for(self.healthy, timeout=60, what=f"operator liveness endpoint (log: {self.log_path})")

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, like the OOM killer or a node loss."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def service_account_kubeconfig(cp, path: Path) -> str:
    """A kubeconfig that authenticates as the operator's ServiceAccount (bound to the chart's rules)."""
    admin = yaml.safe_load(Path(cp.kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    token = cp.kubectl("-n", OPERATOR_NS, "create", "token", OPERATOR_SA, "--duration=4h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": OPERATOR_SA}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="session")
def crd(control_plane):
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    control_plane.kubectl("wait", "--for=condition=Established", "crd/llmtrainingjobs.llmtraining.dev", "--timeout=60s")
    # kubectl's discovery cache learns about the new resource a moment later
    control_plane.wait_for(lambda: control_plane.kubectl("explain", "ltj", check=False).returncode == 0, timeout=60, what="ltj in discovery")
    return "llmtrainingjobs.llmtraining.dev"


@pytest.fixture(scope="session")
def operator(control_plane, crd, tmp_path_factory):
    rules = yaml.safe_load(RULES_FILE.read_text())
    control_plane.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "llm-training-operator-e2e"},
         "rules": rules["namespaced"] + rules["cluster"]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "llm-training-operator-e2e"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "llm-training-operator-e2e"},
         "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]},
    ])
    log_dir = tmp_path_factory.mktemp("operator")
    kubeconfig = service_account_kubeconfig(control_plane, log_dir / "operator.kubeconfig")
    # the identity really is least-privileged: it may not, e.g., read secrets cluster-wide or delete nodes
    assert control_plane.kubectl("auth", "can-i", "list", "secrets", "-A", f"--as=system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}", check=False).stdout.strip() == "no"
    op = OperatorProcess(control_plane, kubeconfig, log_dir)
    op.start()
    yield op
    op.stop()


def job_manifest(name: str, nodes: int = 2, slots: int = 4, **spec_overrides) -> dict:
    spec = {
        "image": "ghcr.io/llmtraining/trainer:0.1.0",
        "nodes": nodes,
        "slotsPerNode": slots,
        "model": {"preset": "tiny"},
        "training": {"steps": 10, "microBatchSize": 1},
    }
    spec.update(spec_overrides)
    return {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": name}, "spec": spec}


def get_job(cp, namespace, name) -> dict:
    return cp.get_json("ltj", name, "-n", namespace)


def job_pods(cp, namespace, name) -> list[dict]:
    return cp.get_json("pods", "-n", namespace, "-l", f"llmtraining.dev/job-name={name}")["items"]


def wait_phase(cp, op, namespace, name, phase, timeout=90) -> dict:
    def reached():
        job = get_job(cp, namespace, name)
        return job if job.get("status", {}).get("phase") == phase else None

    try:
        return cp.wait_for(reached, timeout=timeout, what=f"job {name} phase {phase}")
    except BaseException:
        print(yaml.safe_dump(get_job(cp, namespace, name).get("status")), "\noperator log:\n", op.log_tail(), file=sys.stderr)
        raise


def finish_pod(cp, namespace, pod: str, exit_code: int) -> None:
    cp.kubectl("-n", namespace, "annotate", "pod", pod, f"{cp.EXIT_CODE_ANNOTATION}={exit_code}", "--overwrite")


# ---------------------------------------------------------------------------------------------- API
class TestCRD:
    def test_explain_shows_our_descriptions(self, control_plane, crd):
        explained = control_plane.kubectl("explain", "ltj.spec").stdout
        assert "Worker pods, one per node" in explained
        training = control_plane.kubectl("explain", "ltj.spec.training.gradientClipping").stdout
        assert "Always written into the DeepSpeed" in " ".join(training.split())

    @pytest.mark.parametrize(
        "mutate, expected",
        [
            (lambda m: m["spec"]["training"].update(globalBatchSize=12),
             "training.globalBatchSize (12) must be divisible by microBatchSize × nodes × slotsPerNode = 1 × 2 × 4 = 8"),
            (lambda m: m["metadata"].update(name="x" * 60), "metadata.name is too long"),
            (lambda m: m["spec"]["training"].update(zeroStage=5), "spec.training.zeroStage"),
            (lambda m: m["spec"]["launcher"].update(mode="mpi") if "launcher" in m["spec"] else m["spec"].update(launcher={"mode": "mpi"}),
             'spec.launcher.mode: Unsupported value: "mpi"'),
            (lambda m: m["spec"].pop("image"), "spec.image: Required value"),
            (lambda m: m["spec"].update(data={"format": "tokens"}), "data.paths is required unless data.format is synthetic"),
            (lambda m: m["spec"].update(model={"architecture": "gpt", "nLayers": 2, "dModel": 64, "nHeads": 3}),
             "model.dModel (64) must be divisible by model.nHeads (3)"),
            (lambda m: m["spec"].update(network={"shmSize": "lots"}), "spec.network.shmSize"),
        ],
    )
    def test_api_server_rejects_invalid_manifests(self, control_plane, crd, namespace, mutate, expected):
        manifest = job_manifest("invalid")
        mutate(manifest)
        result = control_plane.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
        assert result.returncode != 0
        assert expected in result.stderr

    def test_schema_defaults_are_applied_by_the_api_server(self, control_plane, crd, namespace):
        control_plane.apply(job_manifest("defaults"), namespace)
        spec = get_job(control_plane, namespace, "defaults")["spec"]
        assert spec["launcher"] == {"mode": "noSsh", "masterPort": 29500, "sshPort": 2222, "peerTimeoutSeconds": 600}
        assert spec["training"]["gradientClipping"] == 1.0 and spec["training"]["precision"] == "bf16"
        assert spec["checkpoint"]["resume"] == "latest"


    def test_spec_is_immutable(self, control_plane, crd, namespace):
        control_plane.apply(job_manifest("frozen"), namespace)
        result = control_plane.kubectl("patch", "ltj", "frozen", "-n", namespace, "--type=merge", "-p", '{"spec": {"training": {"steps": 20}}}', check=False)
        assert result.returncode != 0 and "spec is immutable once the job is created" in result.stderr
        control_plane.kubectl("annotate", "ltj", "frozen", "-n", namespace, "team=search")  # metadata stays editable


# ---------------------------------------------------------------------------------------- reconcile
def test_job_runs_on_gpu_nodes(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("gang"), namespace)
    job = wait_phase(cp, operator, namespace, "gang", "Running")
    assert job["status"]["readyNodes"] == 2 and job["status"]["nodesReady"] == "2/2"

    children = {(o["kind"], o["metadata"]["name"]) for o in cp.get_json("configmaps,services,pods", "-n", namespace, "-l", "llmtraining.dev/job-name=gang")["items"]}
    assert children == {("ConfigMap", "gang-config"), ("Service", "gang"), ("Pod", "gang-worker-0"), ("Pod", "gang-worker-1")}
    nodes = {n["metadata"]["name"]: n for n in cp.get_json("nodes", "-l", cp.GPU_NODE_SELECTOR)["items"]}
    for pod in job_pods(cp, namespace, "gang"):
        assert pod["spec"]["nodeName"] in nodes  # bound by kube-scheduler to a fake GPU node
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("LLMTrainingJob", "gang", job["metadata"]["uid"])

    conditions = {c["type"]: c["status"] for c in job["status"]["conditions"]}
    assert conditions == {"Created": "True", "Running": "True"}
    events = cp.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=gang")["items"]
    assert {"Created", "AllWorkersRunning"} <= {e["reason"] for e in events}

    # rank 0's training metrics reach the status and the printer columns: serve the trainer's own
    # metrics registry at worker 0's (fake, loopback-range) pod IP, where the operator scrapes it
    from prometheus_client import start_http_server

    from llm_trainer.metrics import Metrics

    pod_ip = cp.get_json("pod", "gang-worker-0", "-n", namespace)["status"]["podIP"]
    metrics = Metrics(port=None, info={"model": "tiny"})
    metrics.step.set(4)
    metrics.loss.set(3.25)
    metrics.tokens_per_second.set(1000.0)
    metrics.last_checkpoint_step.set(2)
    server, thread = start_http_server(9090, addr=pod_ip, registry=metrics.registry)
    try:
        job = cp.wait_for(lambda: (j := get_job(cp, namespace, "gang"))["status"].get("progress", {}).get("step") == 4 and j,
                          timeout=30, what="progress from rank 0's metrics")
        assert job["status"]["progress"]["tokensPerSecond"] == 1000.0
        assert job["status"]["lastCheckpoint"]["step"] == 2
        table = cp.kubectl("get", "ltj", "gang", "-n", namespace).stdout.splitlines()
        assert table[0].split() == ["NAME", "PHASE", "NODES", "STEP", "LOSS", "AGE"]
        assert table[1].split()[:5] == ["gang", "Running", "2/2", "4/10", "3.25"]
    finally:
        server.shutdown()


def test_job_succeeds_when_all_workers_exit_zero(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("done"), namespace)
    wait_phase(cp, operator, namespace, "done", "Running")
    for pod in ("done-worker-0", "done-worker-1"):
        finish_pod(cp, namespace, pod, 0)
    job = wait_phase(cp, operator, namespace, "done", "Succeeded")
    assert job["status"]["completionTime"] >= job["status"]["startTime"]
    assert {c["type"]: c["status"] for c in job["status"]["conditions"]}["Succeeded"] == "True"


def test_job_fails_with_the_failed_pod_and_exit_code(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("crash"), namespace)
    wait_phase(cp, operator, namespace, "crash", "Running")
    finish_pod(cp, namespace, "crash-worker-1", 137)
    job = wait_phase(cp, operator, namespace, "crash", "Failed")
    failure = job["status"]["failure"]
    assert failure["pod"] == "crash-worker-1" and failure["rank"] == 1 and failure["exitCode"] == 137
    assert failure["node"]
    # cleanPodPolicy Running (default): the surviving worker is removed, the failed one kept for logs
    cp.wait_for(lambda: [p["metadata"]["name"] for p in job_pods(cp, namespace, "crash")] == ["crash-worker-1"], timeout=60, what="cleanup")


def test_deleting_the_job_removes_every_child(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("gc", launcher={"mode": "ssh"}), namespace)
    wait_phase(cp, operator, namespace, "gc", "Running")
    secret = cp.get_json("secret", "gc-ssh", "-n", namespace)
    assert base64.b64decode(secret["data"]["id_ed25519"]).startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    cp.kubectl("delete", "ltj", "gc", "-n", namespace, "--wait=true", timeout=60)

    def children_gone():
        items = cp.get_json("configmaps,services,secrets,pods", "-n", namespace, "-l", "llmtraining.dev/job-name=gc")["items"]
        return not items

    cp.wait_for(children_gone, timeout=90, what="garbage collection of the job's children")


def test_operator_killed_while_creating_converges_without_duplicates(control_plane, operator, namespace):
    cp = control_plane
    nodes = 12
    cp.apply(job_manifest("restart", nodes=nodes, slots=1), namespace)
    # kill as soon as the first child exists, i.e. in the middle of creating the gang
    cp.wait_for(lambda: cp.kubectl("-n", namespace, "get", "configmap", "restart-config", check=False).returncode == 0,
                timeout=60, interval=0.05, what="first child")
    operator.kill()
    pods_at_kill = len(job_pods(cp, namespace, "restart"))
    print(f"operator killed with {pods_at_kill}/{nodes} pods created", file=sys.stderr)
    operator.start()
    job = wait_phase(cp, operator, namespace, "restart", "Running", timeout=120)
    names = sorted(p["metadata"]["name"] for p in job_pods(cp, namespace, "restart"))
    assert names == sorted(f"restart-worker-{i}" for i in range(nodes))
    assert len(cp.get_json("configmaps", "-n", namespace, "-l", "llmtraining.dev/job-name=restart")["items"]) == 1
    assert job["status"]["nodesReady"] == f"{nodes}/{nodes}"
    # Kopf's bookkeeping lives under our annotation prefix
    annotations = job["metadata"].get("annotations", {})
    assert not [k for k in annotations if k.startswith("kopf.zalando.org")]
    assert not job["metadata"].get("finalizers")  # deleting a job never waits for the operator


def test_pods_are_admitted_under_restricted_pod_security(control_plane, operator, namespace):
    cp = control_plane
    cp.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted", "--overwrite")
    cp.apply(job_manifest("restricted"), namespace)
    job = wait_phase(cp, operator, namespace, "restricted", "Running")
    assert job["status"]["nodesReady"] == "2/2"


def test_status_is_written_only_on_change(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("quiet"), namespace)
    job = wait_phase(cp, operator, namespace, "quiet", "Running")
    version = job["metadata"]["resourceVersion"]
    # pod events that change nothing the status shows must not rewrite the status
    cp.kubectl("-n", namespace, "label", "pod", "quiet-worker-0", "touched=yes")
    time.sleep(3)
    assert get_job(cp, namespace, "quiet")["metadata"]["resourceVersion"] == version


def test_recreated_namesake_never_inherits_the_old_jobs_pods(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("again"), namespace)
    wait_phase(cp, operator, namespace, "again", "Running")
    finish_pod(cp, namespace, "again-worker-1", 137)
    old = wait_phase(cp, operator, namespace, "again", "Failed")
    # delete without waiting for the garbage collector, and submit the same name again at once
    cp.kubectl("delete", "ltj", "again", "-n", namespace, "--wait=false")
    cp.apply(job_manifest("again"), namespace)
    new = wait_phase(cp, operator, namespace, "again", "Running", timeout=120)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert "failure" not in new["status"]
    for pod in job_pods(cp, namespace, "again"):
        assert pod["metadata"]["ownerReferences"][0]["uid"] == new["metadata"]["uid"]
