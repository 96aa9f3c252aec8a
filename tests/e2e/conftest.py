"""Fixtures for end-to-end tests against a real local Kubernetes control plane.

The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok with fake GPU nodes) is built from Go modules and started on 127.0.0.1 by
``hack/controlplane.sh``.  See that script for versions, ports and kwok stages.

Fixtures:
  control_plane (session) -> ControlPlane with .kubeconfig, .env, .bin_dir, .kubectl(...)
  control_planes (session) -> ControlPlanes: .start(name, **env) another control plane, .stop(it)
  namespace     (function) -> name of a fresh namespace, deleted (without waiting) afterwards

Environment knobs:
  LLMTO_CACHE    cache root for binaries/Go caches (default ~/.cache/llm-training-operator)
  LLMTO_CP_DIR   state dir of the running control plane (default /tmp/llmto-controlplane)
  LLMTO_CP_KEEP  "1": leave a control plane this session started running afterwards
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from operator_harness import crd, operator  # noqa: F401  (fixtures: the CRD applied, the operator running)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "hack" / "controlplane.sh"
E2E_DIR = Path(__file__).resolve().parent

# kwok stage contract (hack/controlplane/stages/pod-exit.yaml)
EXIT_CODE_ANNOTATION = "kwok.llmtraining.dev/exit-code"
EXIT_DELAY_ANNOTATION = "kwok.llmtraining.dev/exit-delay"
# fake GPU nodes created by `hack/controlplane.sh up`
GPU_NODE_SELECTOR = "type=kwok"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end test against the local control plane (hack/controlplane.sh)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # everything under tests/e2e is e2e, whether or not it carries the marker explicitly
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return (
            f"{' '.join(map(str, self.cmd))} exited {self.returncode}\n"
            f"stdout: {self.stdout}\nstderr: {self.stderr}"
        )


@dataclass
class ControlPlane:
    kubeconfig: str
    bin_dir: str
    env: dict[str, str]
    state_dir: str
    started_here: bool = False
    _script_env: dict[str, str] = field(default_factory=dict, repr=False)

    # contract with hack/controlplane.sh, exposed here so tests need not import conftest
    EXIT_CODE_ANNOTATION = EXIT_CODE_ANNOTATION
    EXIT_DELAY_ANNOTATION = EXIT_DELAY_ANNOTATION
    GPU_NODE_SELECTOR = GPU_NODE_SELECTOR
    GPU_TOLERATION = GPU_TOLERATION

    def run(self, *cmd: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run any command (helm, kubectl, ...) with .env (our KUBECONFIG and bin dir on PATH)."""
        proc = subprocess.run(list(map(str, cmd)), input=input, capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, list(cmd), proc.stdout, proc.stderr)
        return proc

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run our kubectl against the control plane; text stdout/stderr captured."""
        return self.run(os.path.join(self.bin_dir, "kubectl"), *args, input=input, check=check,
                        timeout=timeout)

    def get_json(self, *args: str) -> Any:
        """`kubectl get ARGS -o json` parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: dict | list | str, namespace: str | None = None) -> str:
        """`kubectl apply -f -` a dict / list of dicts / YAML string."""
        if isinstance(manifest, dict):
            text = json.dumps(manifest)
        elif isinstance(manifest, list):
            text = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifest})
        else:
            text = manifest
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=text).stdout

    @staticmethod
    def wait_for(
        predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.5, what: str = "condition"
    ) -> Any:
        """Poll predicate until it returns a truthy value (returned); fail the test on timeout."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while True:
            try:
                result = predicate()
                if result:
                    return result
            except (KubectlError, KeyError, IndexError, ValueError) as exc:
                last_exc = exc
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}; last error: {last_exc}")
            time.sleep(interval)

    def restart(self, component: str, feature_gates: str | None = None) -> None:
        """Stop one component (e.g. kube-apiserver) and start it again, as a crash and its supervisor would.
        feature_gates: start it with these gates instead (LLMTO_CP_FEATURE_GATES); the caller restores them."""
        env = self._script_env if feature_gates is None else {**self._script_env, "LLMTO_CP_FEATURE_GATES": feature_gates}
        proc = _run_script("restart", env, timeout=180, args=(component,))
        if proc.returncode != 0:
            pytest.fail(f"hack/controlplane.sh restart {component} failed (rc={proc.returncode}):\n{_tail(proc.stdout)}")

    def stop(self, component: str) -> None:
        """Stop one component (e.g. kube-apiserver: the cluster is down for its clients) until restart(component)."""
        proc = _run_script("stop", self._script_env, timeout=60, args=(component,))
        if proc.returncode != 0:
            pytest.fail(f"hack/controlplane.sh stop {component} failed (rc={proc.returncode}):\n{_tail(proc.stdout)}")

    def log_tail(self, component: str, lines: int = 40) -> str:
        path = Path(self.state_dir) / "logs" / f"{component}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"<no log {path}: {exc}>"


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run_script(cmd: str, env: dict[str, str], timeout: float | None, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    # stream into a file (a cold build prints for a long time), read it back afterwards
    with tempfile.NamedTemporaryFile("w+", prefix=f"controlplane-{cmd}-", suffix=".log") as out:
        try:
            proc = subprocess.run(
                ["bash", str(SCRIPT), cmd, *args],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=REPO_ROOT, timeout=timeout, text=True,
            )
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = -1
        out.seek(0)
        return subprocess.CompletedProcess([str(SCRIPT), cmd], rc, out.read(), "")


def start_control_plane(script_env: dict[str, str], state_dir: str) -> ControlPlane:
    """A control plane in state_dir (built first if need be), started unless one already runs there. script_env: the
    environment of hack/controlplane.sh (LLMTO_CP_NODES, LLMTO_CP_AUDIT, ...); its LLMTO_CP_DIR is set to state_dir."""
    script_env = {**script_env, "LLMTO_CP_DIR": state_dir}
    script_env.pop("KUBECONFIG", None)
    build = _run_script("build", script_env, timeout=None)
    if build.returncode != 0:
        pytest.fail(f"hack/controlplane.sh build failed (rc={build.returncode}):\n{_tail(build.stdout)}",
                    pytrace=False)
    bin_dir = _run_script("bin-dir", script_env, timeout=60).stdout.strip().splitlines()[-1]

    already_up = _run_script("status", script_env, timeout=60).returncode == 0
    if not already_up:
        up = _run_script("up", script_env, timeout=600)
        if up.returncode != 0:
            pytest.fail(f"hack/controlplane.sh up failed (rc={up.returncode}):\n{_tail(up.stdout)}",
                        pytrace=False)

    kubeconfig = os.path.join(state_dir, "kubeconfig")
    env = dict(script_env)
    env["KUBECONFIG"] = kubeconfig
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return ControlPlane(kubeconfig=kubeconfig, bin_dir=bin_dir, env=env, state_dir=state_dir,
                        started_here=not already_up, _script_env=script_env)


def stop_control_plane(cp: ControlPlane) -> None:
    """`hack/controlplane.sh down` (with Kueue, if it runs there) for a control plane this session started, unless
    LLMTO_CP_KEEP=1."""
    if cp.started_here and os.environ.get("LLMTO_CP_KEEP") != "1":
        _run_script("down", cp._script_env, timeout=120)


@pytest.fixture(scope="session")
def control_plane() -> ControlPlane:
    script_env = dict(os.environ)
    # the audit log (metadata only) proves who wrote what: tests/e2e/test_two_replicas.py reads it
    script_env.setdefault("LLMTO_CP_AUDIT", "1")
    cp = start_control_plane(script_env, script_env.get("LLMTO_CP_DIR", "/tmp/llmto-controlplane"))
    try:
        yield cp
    finally:
        stop_control_plane(cp)


class ControlPlanes:
    """Control planes beside the session's (e.g. a MultiKueue worker cluster), each in its own state dir
    (<the session's>-<name>), on free loopback ports."""

    def __init__(self, base: ControlPlane):
        self.base = base
        self.started: list[ControlPlane] = []

    def start(self, name: str, **env: str) -> ControlPlane:
        """env: hack/controlplane.sh's settings for this one (LLMTO_CP_NODES, LLMTO_CP_AUDIT, ...) over the session's."""
        cp = start_control_plane({**self.base._script_env, **env}, f"{self.base.state_dir}-{name}")
        self.started.append(cp)
        return cp

    def stop(self, cp: ControlPlane) -> None:
        if cp in self.started:
            self.started.remove(cp)
            stop_control_plane(cp)


@pytest.fixture(scope="session")
def control_planes(control_plane: ControlPlane) -> ControlPlanes:
    """A factory of more control planes; what a test module left running is stopped at the session's end."""
    planes = ControlPlanes(control_plane)
    try:
        yield planes
    finally:
        for cp in list(planes.started):
            planes.stop(cp)


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"e2e-{base}-{uuid.uuid4().hex[:5]}"
    control_plane.kubectl("create", "namespace", name)
    # pods cannot be created before the controller-manager made the default ServiceAccount
    control_plane.wait_for(
        lambda: control_plane.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0,
        timeout=30, what=f"default ServiceAccount in {name}",
    )
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
