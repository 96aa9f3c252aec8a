"""LLMTrainingJobs that train for real: the real node of hack/realnode.sh (containerd, runc, kubelet,
CoreDNS, a private bridge network) beside the kwok nodes, the operator and trainer images built from the
project's Dockerfile with buildah (hack/images.sh), the operator installed in-cluster by the Helm chart.

What kwok cannot show: operator-created pods start the launcher, find their peers by DNS, run DeepSpeed
across two pods, export metrics the operator reads into status, and exit with the truth.

The in-cluster operator watches only this module's namespace (PSA `restricted` enforced); the session's
local operator process (tests/e2e/operator_harness.py), which watches all namespaces, is paused meanwhile
so that one operator owns these jobs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from llm_operator.lifecycle import status_figure
from operator_harness import lease_holder

if TYPE_CHECKING:
    from conftest import ControlPlane

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "llm-training-operator"
REALNODE = REPO / "hack" / "realnode.sh"
IMAGES = REPO / "hack" / "images.sh"
# hack/realnode.sh: the real node's label and taint
REAL_NODE_SELECTOR = {"llmtraining.dev/real-node": "true"}
REAL_NODE_TOLERATION = {"key": "llmtraining.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}
RELEASE = "llmto"
JOB_TIMEOUT = 900  # two CPU pods on a shared 2-core machine: image start, DeepSpeed init, training


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile("w+", prefix="realnode-", suffix=".log") as out:
        try:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=REPO, timeout=timeout, text=True).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        out.seek(0)
        return subprocess.CompletedProcess(cmd, rc, out.read(), "")


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def real_node(control_plane: ControlPlane) -> dict[str, str]:
    env = {**control_plane._script_env, "LLMTO_CP_DIR": control_plane.state_dir}
    started = _run(["bash", str(REALNODE), "status"], env, 60).returncode != 0
    if started:
        up = _run(["bash", str(REALNODE), "up"], env, 1800)
        if up.returncode != 0:
            pytest.fail(f"hack/realnode.sh up failed (rc={up.returncode}):\n{_tail(up.stdout)}", pytrace=False)
    yield env
    if started and os.environ.get("LLMTO_CP_KEEP") != "1":
        down = _run(["bash", str(REALNODE), "down"], env, 300)
        assert down.returncode == 0, _tail(down.stdout)


def import_images(real_node: dict[str, str], *targets: str) -> dict[str, str]:
    """target -> image ref, built from the Dockerfile (cached by content hash) and imported into containerd."""
    proc = _run(["bash", str(IMAGES), "import", *targets], real_node, 3600)
    if proc.returncode != 0:
        pytest.fail(f"hack/images.sh import failed (rc={proc.returncode}):\n{_tail(proc.stdout)}", pytrace=False)
    refs = dict(line.split()[:2] for line in proc.stdout.splitlines() if line.startswith(tuple(f"{t} " for t in targets)))
    assert set(refs) == set(targets), proc.stdout
    return refs


@pytest.fixture(scope="module")
def operator_image(real_node: dict[str, str]) -> str:
    """The operator image alone (no torch, no DeepSpeed): all that cluster_operator needs, so a test of the operator
    itself (tests/e2e/test_operator_upgrade.py) does not wait for the trainer images."""
    return import_images(real_node, "operator")["operator"]


@pytest.fixture(scope="module")
def images(real_node: dict[str, str], operator_image: str) -> dict[str, str]:
    """target -> image ref, built from the Dockerfile (cached by content hash) and imported into containerd.
    examples-cpu: the dependency-only stage (no llm-training-operator) plus examples/programs, a user's image."""
    return {"operator": operator_image, **import_images(real_node, "trainer-cpu", "examples-cpu")}


@pytest.fixture(scope="module")
def real_ns(control_plane: ControlPlane) -> str:
    cp = control_plane
    name = f"e2e-real-node-{uuid.uuid4().hex[:5]}"
    cp.kubectl("create", "namespace", name)
    cp.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
               "pod-security.kubernetes.io/warn=restricted")
    cp.wait_for(lambda: cp.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0,
                timeout=30, what="default ServiceAccount")
    yield name
    cp.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def cluster_operator(control_plane: ControlPlane, crd, operator_image: str, real_ns: str, request,
                     tmp_path_factory) -> dict[str, Any]:
    """The operator in-cluster, from its image, installed by the chart with the chart's RBAC."""
    cp = control_plane
    local = request.getfixturevalue("operator")  # the session's local operator: paused while we run
    local.stop()
    repo, tag = operator_image.rsplit(":", 1)
    values = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "watchNamespaces": [real_ns], "logFormat": "plain",
        "extraArgs": ["--progress-interval", "1", "--restart-backoff", "1", "--max-restart-backoff", "4"],
        "nodeSelector": REAL_NODE_SELECTOR, "tolerations": [REAL_NODE_TOLERATION],
    }
    path = tmp_path_factory.mktemp("chart") / "values.yaml"
    # JSON (YAML 1.2): every string quoted. PyYAML leaves a content-hash tag such as 1234e5678901 bare, which helm reads
    # as a number and its schema refuses (image.tag: got number, want string)
    path.write_text(json.dumps(values))
    install = cp.run("helm", "install", RELEASE, str(CHART), "-n", real_ns, "-f", str(path), "--wait",
                     "--timeout", "180s", check=False, timeout=240)
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
    if install.returncode != 0:
        describe = cp.kubectl("-n", real_ns, "describe", "pods", "-l", selector, check=False).stdout
        pytest.fail(f"helm install failed: {install.stderr}\n{describe[-4000:]}", pytrace=False)
    assert "violate" not in install.stderr, install.stderr
    # the chart's two replicas (leader election): the one that holds the Lease is the operator whose log tells
    pods = cp.get_json("-n", real_ns, "pods", "-l", selector)["items"]
    assert len(pods) == 2 and {p["spec"]["nodeName"] for p in pods} == {"realnode"}
    holder = cp.wait_for(lambda: lease_holder(cp, real_ns), timeout=60, what="a replica holding the Lease")
    (pod,) = [p for p in pods if holder.startswith(p["metadata"]["name"] + "_")]
    yield {"pod": pod["metadata"]["name"], "namespace": real_ns, "release": RELEASE}
    # the replica that leads now (a test may have upgraded the release: then not the pod above)
    leader = lease_holder(cp, real_ns).rpartition("_")[0] or pod["metadata"]["name"]
    logs = cp.kubectl("-n", real_ns, "logs", leader, "--tail=80", check=False).stdout
    print(f"in-cluster operator log of {leader} (tail):\n" + logs)
    cp.run("helm", "uninstall", RELEASE, "-n", real_ns, "--wait", "--timeout", "60s", check=False, timeout=120)
    local.start()


@pytest.fixture
def checkpoint_claim(control_plane: ControlPlane, real_ns: str, tmp_path: Path, request) -> tuple[str, Path]:
    """A PVC bound to a hostPath PV in a host temp dir: the job's output (checkpoints, summary.json) outlives
    its pods and the test reads it from here."""
    cp = control_plane
    name = f"ckpt-{uuid.uuid4().hex[:6]}"
    host_dir = tmp_path / "checkpoints"
    host_dir.mkdir()
    host_dir.chmod(0o777)  # the trainer runs as uid 1000; hostPath volumes get no fsGroup
    cp.apply([
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{real_ns}-{name}"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(host_dir), "type": "Directory"},
                  "claimRef": {"namespace": real_ns, "name": name}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": real_ns},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": f"{real_ns}-{name}",
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ])
    yield name, host_dir
    cp.kubectl("delete", "pv", f"{real_ns}-{name}", "--wait=false", check=False)


def real_job(name: str, image: str, claim: str, mode: str = "noSsh", steps: int = 40, checkpoint_every: int = 10,
             log_every: int = 5) -> dict:
    spec: dict[str, Any] = {
        "image": image,
        "accelerator": "cpu",
        "nodes": 2,
        "slotsPerNode": 1,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "launcher": {"mode": mode},
        "model": {"preset": "tiny"},
        "data": {"format": "synthetic"},
        "training": {"steps": steps, "microBatchSize": 4, "globalBatchSize": 8, "precision": "fp32", "zeroStage": 1,
                     "learningRate": 0.003, "warmupSteps": 5, "logIntervalSteps": log_every, "compile": False},
        "checkpoint": {"volume": {"persistentVolumeClaim": {"claimName": claim}}, "intervalSteps": checkpoint_every,
                       "keep": 2},
        "podTemplate": {"nodeSelector": REAL_NODE_SELECTOR, "tolerations": [REAL_NODE_TOLERATION],
                        "terminationGracePeriodSeconds": 30},
    }
    return {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": name}, "spec": spec}


def job_status(cp: ControlPlane, ns: str, name: str) -> dict:
    return cp.get_json("-n", ns, "ltj", name).get("status") or {}


def worker_pods(cp: ControlPlane, ns: str, name: str) -> list[dict]:
    pods = cp.get_json("-n", ns, "pods", "-l", f"llmtraining.dev/job-name={name}")["items"]
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def diagnose(cp: ControlPlane, ns: str, name: str) -> str:
    out = [yaml.safe_dump(job_status(cp, ns, name))]
    for pod in worker_pods(cp, ns, name):
        pod_name = pod["metadata"]["name"]
        out.append(f"--- {pod_name}: {pod['status'].get('phase')}")
        out.append(cp.kubectl("-n", ns, "logs", pod_name, "--tail=40", check=False).stdout)
    out.append(cp.kubectl("-n", ns, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout[-3000:])
    return "\n".join(out)


def wait_phase(cp: ControlPlane, ns: str, name: str, phase: str, timeout: float = JOB_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job_status(cp, ns, name)
        if status.get("phase") == phase:
            return status
        if status.get("phase") == "Failed" and phase != "Failed":
            pytest.fail(f"job {name} Failed:\n{diagnose(cp, ns, name)}", pytrace=False)
        time.sleep(2)
    pytest.fail(f"job {name} not {phase} after {timeout}s:\n{diagnose(cp, ns, name)}", pytrace=False)


def host_processes(pod_uid: str, needle: str) -> list[int]:
    """Host PIDs of the pod's processes whose command line contains needle (the kubelet's cgroupfs paths
    carry the pod UID)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if pod_uid not in (proc / "cgroup").read_text() and pod_uid.replace("-", "_") not in (proc / "cgroup").read_text():
                continue
            if needle in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def assert_trained(cp: ControlPlane, ns: str, name: str, status: dict, host_dir: Path) -> dict:
    summary = json.loads((host_dir / "summary.json").read_text())
    progress = status["progress"]
    assert progress["step"] == summary["steps"] == progress["totalSteps"], (progress, summary)
    assert progress["loss"] == status_figure(summary["final_loss"]), (progress, summary)  # 4 significant digits in status
    assert summary["world_size"] == 2
    assert summary["final_loss"] < summary["initial_loss"]
    return summary


def check_pods_hardened(cp: ControlPlane, ns: str, name: str) -> None:
    """The restricted profile, as admitted and as it runs: uid 1000, seccomp filter on, no new privileges."""
    pods = cp.wait_for(lambda: (lambda p: p if len(p) == 2 and all(x["status"].get("phase") == "Running" for x in p) else None)(
        worker_pods(cp, ns, name)), timeout=JOB_TIMEOUT, what="2 worker pods Running")
    for pod in pods:
        assert pod["spec"]["nodeName"] == "realnode"
        sc = pod["spec"]["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
        uid = pod["metadata"]["uid"]
        pids = cp.wait_for(lambda uid=uid: host_processes(uid, "llm-train"), timeout=60,
                           what=f"{pod['metadata']['name']}'s processes")
        for pid in pids:
            st = proc_status(pid)
            assert st["Uid"].split()[0] == "1000", st["Uid"]
            assert st["Seccomp"] == "2", st  # 2: a seccomp filter (RuntimeDefault)
            assert st["NoNewPrivs"] == "1", st


@pytest.mark.parametrize("mode", ["noSsh", "ssh"])
def test_job_trains_to_succeeded(control_plane: ControlPlane, cluster_operator, images, real_ns: str,
                                 checkpoint_claim, mode: str):
    cp = control_plane
    claim, host_dir = checkpoint_claim
    name = f"tiny-{mode.lower()}"
    cp.apply(real_job(name, images["trainer-cpu"], claim, mode=mode), namespace=real_ns)
    try:
        check_pods_hardened(cp, real_ns, name)
        running = time.monotonic()
        cp.wait_for(lambda: (job_status(cp, real_ns, name).get("progress") or {}).get("step", 0) > 0,
                    timeout=JOB_TIMEOUT, interval=1, what="the first step")
        print(f"{mode}: first step {time.monotonic() - running:.0f}s after both pods were Running")
        status = wait_phase(cp, real_ns, name, "Succeeded")
        summary = assert_trained(cp, real_ns, name, status, host_dir)
        print(f"{mode}: {summary['steps']} steps, loss {summary['initial_loss']:.3f} -> {summary['final_loss']:.3f}")
        # the training lines are in the pod logs (rank 0's worker pod prints them; pdsh prefixes "<host>: ")
        pod0 = worker_pods(cp, real_ns, name)[0]["metadata"]["name"]
        logs = cp.kubectl("-n", real_ns, "logs", pod0).stdout
        steps = [json.loads(line[line.index("{"):]) for line in logs.splitlines() if '{"step": ' in line]
        assert steps and steps[-1]["step"] == summary["steps"], logs[-3000:]
    finally:
        cp.kubectl("-n", real_ns, "delete", "ltj", name, "--wait=true", "--timeout=120s", check=False, timeout=150)


def test_killed_worker_fails_the_gang_which_resumes_from_its_checkpoint(
        control_plane: ControlPlane, cluster_operator, images, real_ns: str, checkpoint_claim):
    cp = control_plane
    claim, host_dir = checkpoint_claim
    name = "tiny-killed"
    # long enough that the kill lands mid-run however fast this machine trains the tiny model (~30 steps/s idle)
    cp.apply(real_job(name, images["trainer-cpu"], claim, steps=1000, checkpoint_every=100, log_every=20),
             namespace=real_ns)
    try:
        # past the first checkpoint, then SIGKILL rank 1's training process
        status = cp.wait_for(lambda: (lambda s: s if (s.get("lastCheckpoint") or {}).get("step", 0) >= 100 else None)(
            job_status(cp, real_ns, name)), timeout=JOB_TIMEOUT, interval=0.5, what="a checkpoint")
        assert status["progress"]["step"] < 900, f"too late to kill a worker mid-run: {status['progress']}"
        victim = worker_pods(cp, real_ns, name)[1]
        pids = host_processes(victim["metadata"]["uid"], "-m llm_trainer.worker")  # the rank, not its launcher
        assert pids, "rank 1's training process not found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        status = cp.wait_for(lambda: (lambda s: s if s.get("failure") and s.get("restarts", 0) >= 1 else None)(
            job_status(cp, real_ns, name)), timeout=300, what="the failure recorded and a restart")
        failure = status["failure"]
        assert failure["pod"] == victim["metadata"]["name"], failure
        assert failure["rank"] == 1, failure
        assert failure["exitCode"] not in (None, 0), failure
        status = wait_phase(cp, real_ns, name, "Succeeded")
        assert status["restarts"] == 1 and status["failure"]["pod"] == victim["metadata"]["name"]
        summary = assert_trained(cp, real_ns, name, status, host_dir)
        assert summary["resumed_from"], summary  # the new gang resumed from the checkpoint, not from step 0
        print(f"killed worker: failure {failure}; resumed from {summary['resumed_from']}")
    finally:
        cp.kubectl("-n", real_ns, "delete", "ltj", name, "--wait=true", "--timeout=120s", check=False, timeout=150)


# ------------------------------------------------------------------------------ your own program (spec.program) --
# The user's image is examples-cpu: the Dockerfile's dependency-only stage (torch, DeepSpeed, transformers, no
# llm-training-operator) plus examples/programs; the operator injects its launcher from the operator image.


def program_job(name: str, image: str, claim: str | None, command: list[str], launcher: str, slots: int) -> dict:
    spec: dict[str, Any] = {
        "image": image,
        "accelerator": "cpu",
        "nodes": 2,
        "slotsPerNode": slots,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "program": {"command": command, "workingDir": "/workspace", "launcher": launcher},
        "podTemplate": {"nodeSelector": REAL_NODE_SELECTOR, "tolerations": [REAL_NODE_TOLERATION],
                        "terminationGracePeriodSeconds": 30},
    }
    if claim is not None:
        spec["checkpoint"] = {"volume": {"persistentVolumeClaim": {"claimName": claim}}}
    return {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": name}, "spec": spec}


def pod_logs(cp: ControlPlane, ns: str, pod: str) -> str:
    return cp.kubectl("-n", ns, "logs", pod, "-c", "trainer", check=False).stdout


def world_sizes(logs: str) -> dict[int, int]:
    """rank -> world size, from the programs' own `rank R of world size W` lines. Not anchored at a line start: two
    ranks of one pod share its stdout, and one's line can land right after another's (seen in CI)."""
    return {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"rank (\d+) of world size (\d+)", logs)}


def test_own_deepspeed_program_trains_at_world_size_4_and_resumes_from_its_checkpoint_after_a_killed_rank(
        control_plane: ControlPlane, cluster_operator, images, real_ns: str, checkpoint_claim):
    """examples/programs/train_deepspeed.py, 2 pods x 2 ranks under DeepSpeed's runner: world size 4 in its own output;
    global rank 3 SIGKILLed after the program's first save_checkpoint -> status.failure names the pod and rank 3, the
    gang restarts, the program resumes from its own checkpoint (its output says so) and the job Succeeds."""
    cp = control_plane
    claim, host_dir = checkpoint_claim
    name = "prog-deepspeed"
    steps = 40
    command = ["python3", "programs/train_deepspeed.py", "--steps", str(steps), "--save-every", "5", "--step-seconds", "0.5"]
    cp.apply(program_job(name, images["examples-cpu"], claim, command, "deepspeed", slots=2), namespace=real_ns)
    try:
        latest = host_dir / "checkpoints" / "latest"  # DeepSpeed's save_checkpoint writes it, on the shared volume
        cp.wait_for(lambda: latest.exists(), timeout=JOB_TIMEOUT, interval=0.5, what="the program's first checkpoint")
        pods = worker_pods(cp, real_ns, name)
        victim = pods[1]
        pids = host_processes(victim["metadata"]["uid"], "train_deepspeed.py --local_rank=1")  # DeepSpeed's rank command line
        assert len(pids) == 1, f"rank 3 (node 1, local rank 1) not found: {pids}"
        os.kill(pids[0], signal.SIGKILL)
        first_logs = pod_logs(cp, real_ns, pods[0]["metadata"]["name"]) + pod_logs(cp, real_ns, victim["metadata"]["name"])
        assert world_sizes(first_logs) == {0: 4, 1: 4, 2: 4, 3: 4}, first_logs[-3000:]
        assert "done:" not in first_logs, "the kill did not land mid-run"
        status = cp.wait_for(lambda: (lambda s: s if s.get("failure") and s.get("restarts", 0) >= 1 else None)(
            job_status(cp, real_ns, name)), timeout=300, what="the failure recorded and a restart")
        failure = status["failure"]
        assert failure["pod"] == victim["metadata"]["name"] and failure["rank"] == 1, failure
        assert "rank 3: killed by SIGKILL" in failure["message"], failure
        status = wait_phase(cp, real_ns, name, "Succeeded")
        assert status["restarts"] == 1 and status["failure"]["pod"] == victim["metadata"]["name"], status
        logs = pod_logs(cp, real_ns, worker_pods(cp, real_ns, name)[0]["metadata"]["name"])
        resumed = [int(m.group(1)) for m in re.finditer(r"rank 0 resumed from step (\d+) \(restart 1\)", logs)]
        assert resumed and 5 <= resumed[0] < steps, logs[-3000:]
        assert f"done: {steps} steps at world size 4" in logs, logs[-3000:]
        print(f"deepspeed program: killed rank 3, failure {failure['message']!r}; resumed from step {resumed[0]}")
    finally:
        cp.kubectl("-n", real_ns, "delete", "ltj", name, "--wait=true", "--timeout=120s", check=False, timeout=150)


def test_a_command_missing_from_the_image_fails_the_job_at_once_naming_it(control_plane: ControlPlane, cluster_operator,
                                                                          images, real_ns: str):
    """The launcher exits 5 (bad input) before anything starts: the default podFailurePolicy fails the job, no restarts."""
    cp = control_plane
    name = "prog-missing"
    cp.apply(program_job(name, images["examples-cpu"], None, ["no-such-trainer", "--config", "x.yaml"], "exec", slots=1),
             namespace=real_ns)
    try:
        status = wait_phase(cp, real_ns, name, "Failed", timeout=300)
        assert not status.get("restarts"), status
        failure = status["failure"]
        assert failure["exitCode"] == 5, failure
        assert "program.command: 'no-such-trainer' is not in the image" in failure["message"], failure
    finally:
        cp.kubectl("-n", real_ns, "delete", "ltj", name, "--wait=true", "--timeout=120s", check=False, timeout=150)


def scrape_series(pod: dict, port: int) -> dict[str, float]:
    """The llmtrain_* samples a pod serves on its monitoring port (the host reaches the pod network's bridge)."""
    try:
        with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}/metrics", timeout=3) as response:
            text = response.read().decode()
    except (OSError, KeyError):
        return {}
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(llmtrain_\w+) (\S+)$", text, re.M)}


def test_hf_trainer_program_reports_progress_from_its_kubeflow_callback(control_plane: ControlPlane, cluster_operator,
                                                                        images, real_ns: str, checkpoint_claim):
    """examples/programs/train_hf_trainer.py across 2 pods (torchrun, DDP over gloo): while it runs, status.progress and
    worker 0's llmtrain_* series carry the step, total and loss its KubeflowCallback posted; then Succeeded."""
    cp = control_plane
    claim, _ = checkpoint_claim
    name = "prog-hf-trainer"
    steps = 30
    command = ["python3", "programs/train_hf_trainer.py", "--steps", str(steps), "--save-steps", "10", "--step-seconds", "0.5"]
    cp.apply(program_job(name, images["examples-cpu"], claim, command, "torchrun", slots=1), namespace=real_ns)
    try:
        def reported() -> dict | None:
            progress = job_status(cp, real_ns, name).get("progress") or {}
            return progress if progress.get("step", 0) > 0 and progress.get("loss") is not None else None

        progress = cp.wait_for(reported, timeout=JOB_TIMEOUT, interval=1, what="progress from the KubeflowCallback")
        assert 0 < progress["step"] <= steps and progress["totalSteps"] == steps and progress["loss"] > 0, progress
        pod0 = worker_pods(cp, real_ns, name)[0]
        series = cp.wait_for(lambda: (lambda s: s if "llmtrain_step" in s else None)(scrape_series(pod0, 29600)), timeout=60,
                             what="worker 0's llmtrain_* series")
        assert series["llmtrain_total_steps"] == steps and 0 < series["llmtrain_step"] <= steps and series["llmtrain_loss"] > 0, series
        status = wait_phase(cp, real_ns, name, "Succeeded")
        assert not status.get("restarts"), status
        assert status["progress"]["totalSteps"] == steps and status["progress"]["step"] >= progress["step"], status["progress"]
        logs = pod_logs(cp, real_ns, pod0["metadata"]["name"])
        assert world_sizes(logs) == {0: 2}, logs[-3000:]
        assert f"done: {steps} steps at world size 2" in logs, logs[-3000:]
        print(f"hf trainer program: progress while running {progress}, series {series}")
    finally:
        cp.kubectl("-n", real_ns, "delete", "ltj", name, "--wait=true", "--timeout=120s", check=False, timeout=150)
