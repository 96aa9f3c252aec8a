"""The operator under test: `llm-operator run` as a subprocess under the chart's least-privileged
ServiceAccount, and the helpers the e2e tests use to drive jobs and read them back through the API server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from llm_operator.lease import LEASE_NAME

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "charts" / "llm-training-operator" / "files" / "rbac-rules.yaml"
OPERATOR_NS = "llm-operator-e2e"
OPERATOR_SA = "llm-training-operator"


def json_documents(text: str) -> list[dict]:
    """The JSON documents of a `kubectl get -w -o json` output, one after another (pretty-printed, not one a line)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return found
        document, at = decoder.raw_decode(text, at)
        found.append(document)


def lease_holder(cp, namespace: str) -> str:
    """The holderIdentity of the operator's Lease (`<pod name>_<random suffix>`); empty when none holds it."""
    proc = cp.kubectl("-n", namespace, "get", "lease", LEASE_NAME, "-o", "jsonpath={.spec.holderIdentity}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """`llm-operator run` as a child process, restartable and killable like a real pod."""

    def __init__(self, control_plane, kubeconfig: str, log_dir: Path, name: str = "operator", leader_election: bool = False,
                 namespaces: tuple[str, ...] = ()):
        """leader_election: take part in it as the replica `name` (POD_NAME; the Lease in OPERATOR_NS); else
        --no-leader-election, as the only writer (the tests that are not about replicas). namespaces: watch only
        these (else all)."""
        self.name, self.leader_election, self.namespaces = name, leader_election, namespaces
        self.cp = control_plane
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.extra_args: list[str] = []  # e.g. --kueue (tests/e2e/test_kueue.py restarts the operator with it)

    def start(self) -> None:
        self.starts += 1
        self.health_port = free_port()
        self.metrics_port = free_port()
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "POD_NAME": self.name, "POD_NAMESPACE": OPERATOR_NS}
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        self.log = open(self.log_path, "w")
        scope = [f"--namespace={ns}" for ns in self.namespaces] or ["--all-namespaces"]
        election = [] if self.leader_election else ["--no-leader-election"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llm_operator.cli", "run", *scope, *election, "--health-port", str(self.health_port), "--log-format", "plain",
             "--metrics-port", str(self.metrics_port), "--progress-interval", "1",
             "--restart-backoff", "1", "--max-restart-backoff", "4", "-v", *self.extra_args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        self.cp.wait_for(self.healthy, timeout=60, what=f"operator liveness endpoint (log: {self.log_path})")

    def healthy(self, probe: str = "healthz") -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/{probe}", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def ready(self) -> bool:
        """/readyz: the view filled from a listing (leader or warm standby)."""
        return self.healthy("readyz")

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


def service_account_kubeconfig(cp, path: Path, namespace: str = OPERATOR_NS, account: str = OPERATOR_SA) -> str:
    """A kubeconfig that authenticates as a ServiceAccount, by default the operator's (bound to the chart's rules):
    the API server's address and CA inline, a token (4 h)."""
    admin = yaml.safe_load(Path(cp.kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    token = cp.kubectl("-n", namespace, "create", "token", account, "--duration=4h").stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": account}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def install_crd(cp) -> str:
    """Our CRD applied and served (in discovery)."""
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    # not `kubectl wait`: it errors out instead of waiting while the new CRD has no status conditions yet
    cp.wait_for(lambda: cp.kubectl(
        "get", "crd/llmtrainingjobs.llmtraining.dev", "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}").stdout == "True",
        timeout=60, what="the CRD established")
    # kubectl's discovery cache learns about the new resource a moment later
    cp.wait_for(lambda: cp.kubectl("explain", "ltj", check=False).returncode == 0, timeout=60, what="ltj in discovery")
    return "llmtrainingjobs.llmtraining.dev"


@pytest.fixture(scope="session")
def crd(control_plane):
    return install_crd(control_plane)


def start_operator(cp, log_dir: Path, rule_sets: tuple[str, ...] = ("namespaced", "cluster"), extra_args: tuple[str, ...] = ()) -> OperatorProcess:
    """`llm-operator run` against cp under the operator's ServiceAccount, bound to these rule sets of the chart's
    rbac-rules.yaml (and nothing more), started and healthy."""
    rules = yaml.safe_load(RULES_FILE.read_text())
    cp.apply([
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "llm-training-operator-e2e"},
         "rules": [rule for rule_set in rule_sets for rule in rules[rule_set]]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "llm-training-operator-e2e"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "llm-training-operator-e2e"},
         "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]},
    ])
    kubeconfig = service_account_kubeconfig(cp, log_dir / "operator.kubeconfig")
    # the identity really is least-privileged: it may not, e.g., read secrets cluster-wide or delete nodes
    assert cp.kubectl("auth", "can-i", "list", "secrets", "-A", f"--as=system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}", check=False).stdout.strip() == "no"
    op = OperatorProcess(cp, kubeconfig, log_dir)
    op.extra_args = list(extra_args)
    op.start()
    return op


@pytest.fixture(scope="session")
def operator(control_plane, crd, tmp_path_factory):
    op = start_operator(control_plane, tmp_path_factory.mktemp("operator"))
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
