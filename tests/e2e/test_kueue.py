"""Queueing with Kueue, for real: Kueue v0.17.0 built from Go modules (hack/kueue.sh) runs against the local
control plane with its CRDs and webhooks, and the operator runs with --kueue under the chart's rules plus its
kueue rules. The ClusterQueue's quota is the GPUs of the 3 kwok nodes (3 x 8); kwok ends pods with the exit
code a test annotates (hack/controlplane/stages/pod-exit.yaml)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llm_operator.kueue import build_workload as build_kueue_workload
from llm_operator.api import parse_job
from llm_operator.multikueue import PREBUILT_WORKLOAD_LABEL
from llm_operator.render import RenderContext, build_worker_pod
from operator_harness import OPERATOR_NS, OPERATOR_SA, RULES_FILE, finish_pod, get_job, job_manifest, job_pods, wait_phase

REPO = Path(__file__).resolve().parents[2]
KUEUE_SCRIPT = REPO / "hack" / "kueue.sh"
KUEUE = "kueue.x-k8s.io/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
FLAVOR = "llmto-e2e-gpu"
LOCAL_QUEUE = "team-queue"
GPUS = 24  # 3 kwok nodes x 8
FLAVOR_NODE_LABELS = {"nvidia.com/gpu.present": "true"}  # the kwok GPU nodes have it
FLAVOR_TOLERATION = {"key": "llmtraining.dev/e2e-reserved", "operator": "Exists", "effect": "NoSchedule"}
E2E_ROLE = "llm-training-operator-e2e-kueue"


def _script(cmd: str, cp, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(KUEUE_SCRIPT), cmd], env={**cp._script_env, "LLMTO_CP_DIR": cp.state_dir, "PYTHON": sys.executable},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def kueue(control_plane, operator):
    """Kueue up (built first if need be: ~9 min cold), and the operator restarted with --kueue and the kueue rules."""
    cp = control_plane
    up = _script("up", cp)
    if up.returncode != 0:
        pytest.fail(f"hack/kueue.sh up failed (rc={up.returncode}):\n{up.stdout[-3000:]}\n{up.stderr[-6000:]}", pytrace=False)
    rules = yaml.safe_load(RULES_FILE.read_text())
    cp.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": E2E_ROLE},
         "rules": rules["kueueNamespaced"] + rules["kueueCluster"]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": E2E_ROLE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": E2E_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]},
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR},
         "spec": {"nodeLabels": FLAVOR_NODE_LABELS, "tolerations": [FLAVOR_TOLERATION]}},
        {"apiVersion": KUEUE, "kind": "WorkloadPriorityClass", "metadata": {"name": "llmto-e2e-low"}, "value": 100},
        {"apiVersion": KUEUE, "kind": "WorkloadPriorityClass", "metadata": {"name": "llmto-e2e-high"}, "value": 10000},
    ])
    operator.stop()
    operator.extra_args = ["--kueue"]
    operator.start()
    try:
        yield
    finally:
        operator.stop()
        operator.extra_args = []
        operator.start()
        cp.kubectl("delete", "clusterrolebinding,clusterrole", E2E_ROLE, "--ignore-not-found", check=False)
        if os.environ.get("LLMTO_CP_KEEP") != "1":
            _script("down", cp, timeout=120)


@pytest.fixture
def queue(control_plane, kueue, namespace):
    """A ClusterQueue for this test's namespace (quota: all the GPUs, lower priorities preemptible) and its LocalQueue."""
    cp = control_plane
    name = f"cq-{namespace}"[:63]
    cp.apply({"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "preemption": {"withinClusterQueue": "LowerPriority"},
        "resourceGroups": [{"coveredResources": ["nvidia.com/gpu"],
                            "flavors": [{"name": FLAVOR, "resources": [{"name": "nvidia.com/gpu", "nominalQuota": GPUS}]}]}],
    }})
    cp.wait_for(lambda: any(c["type"] == "Active" and c["status"] == "True"
                            for c in cp.get_json("clusterqueue", name).get("status", {}).get("conditions", [])),
                timeout=60, what=f"ClusterQueue {name} active")
    yield name
    cp.kubectl("delete", "clusterqueue", name, "--wait=false", "--ignore-not-found", check=False)


def local_queue(cp, namespace, cluster_queue) -> None:
    cp.apply({"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": LOCAL_QUEUE}, "spec": {"clusterQueue": cluster_queue}}, namespace)


def queued_job(name: str, nodes: int, priority: str | None = None) -> dict:
    job = job_manifest(name, nodes=nodes, slots=8)
    job["metadata"]["labels"] = {QUEUE_LABEL: LOCAL_QUEUE, **({PRIORITY_LABEL: priority} if priority else {})}
    return job


def workload(cp, namespace, job_name) -> dict:
    items = cp.get_json("workloads.kueue.x-k8s.io", "-n", namespace, "-l", f"llmtraining.dev/job-name={job_name}")["items"]
    assert len(items) == 1, [w["metadata"]["name"] for w in items]
    return items[0]


def condition(obj, type_) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def events(cp, namespace, name) -> list[dict]:
    return cp.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]


def live_pods(pods) -> list[dict]:
    """Bound to a node and not ended: holding the node's GPUs."""
    return [p for p in pods if p["spec"].get("nodeName") and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]


def finish_gang(cp, namespace, name) -> None:
    for pod in job_pods(cp, namespace, name):
        finish_pod(cp, namespace, pod["metadata"]["name"], 0)


class Overlap:
    """Samples the namespace's pods: at no moment may two jobs hold bound, unfinished pods at once."""

    def __init__(self, cp, namespace):
        self.cp, self.namespace, self.samples, self.together = cp, namespace, 0, []

    def sample(self) -> dict[str, int]:
        pods = self.cp.get_json("pods", "-n", self.namespace)["items"]
        holding: dict[str, int] = {}
        for pod in live_pods(pods):
            job = pod["metadata"]["labels"]["llmtraining.dev/job-name"]
            holding[job] = holding.get(job, 0) + 1
        self.samples += 1
        if len(holding) > 1:
            self.together.append(holding)
        return holding

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sample()
            result = predicate()
            if result:
                return result
            time.sleep(0.3)
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


def test_queued_job_waits_then_its_whole_gang_is_admitted(control_plane, operator, queue, namespace):
    cp = control_plane
    cp.apply(queued_job("queued", nodes=3), namespace)  # its LocalQueue does not exist yet: Kueue cannot admit it
    job = cp.wait_for(lambda: (j := get_job(cp, namespace, "queued")) and condition(j, "Queued").get("status") == "True" and j,
                      timeout=60, what="the job Queued")
    assert job["status"]["phase"] == "Pending"
    assert condition(job, "Queued")["reason"] == "WaitingForAdmission"
    assert f"waiting for Kueue admission in LocalQueue {LOCAL_QUEUE}" in condition(job, "Queued")["message"]
    wl = workload(cp, namespace, "queued")
    assert wl["spec"]["queueName"] == LOCAL_QUEUE and wl["spec"]["podSets"][0]["count"] == 3
    assert wl["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    cp.wait_for(lambda: condition(get_job(cp, namespace, "queued"), "Queued").get("message", "").endswith(
                f": LocalQueue {LOCAL_QUEUE} doesn't exist"), timeout=30, what="Kueue's reason in the Queued message")
    time.sleep(3)
    assert job_pods(cp, namespace, "queued") == []  # nothing runs before admission

    local_queue(cp, namespace, queue)
    job = wait_phase(cp, operator, namespace, "queued", "Running", timeout=90)
    pods = job_pods(cp, namespace, "queued")
    assert len(live_pods(pods)) == 3  # the whole gang, at once
    for pod in pods:  # placed on the nodes of the flavor Kueue admitted it on
        assert pod["spec"]["nodeSelector"].items() >= FLAVOR_NODE_LABELS.items()
        assert FLAVOR_TOLERATION in pod["spec"]["tolerations"]
    assert condition(job, "Queued")["status"] == "False" and condition(job, "Queued")["reason"] == "Admitted"
    assert queue in condition(job, "Queued")["message"]
    assert "Admitted" in {e["reason"] for e in events(cp, namespace, "queued")}
    assert condition(workload(cp, namespace, "queued"), "Admitted")["status"] == "True"

    finish_gang(cp, namespace, "queued")
    wait_phase(cp, operator, namespace, "queued", "Succeeded")
    cp.wait_for(lambda: condition(workload(cp, namespace, "queued"), "Finished").get("status") == "True",
                timeout=30, what="the Workload Finished (its quota released)")


def test_a_job_copied_by_multikueue_adopts_its_prebuilt_workload_and_runs(control_plane, operator, queue, namespace):
    """MultiKueue's worker side (issue 20), on one cluster: the test creates what MultiKueue would here, a copy of the
    manager's Workload (the manager operator's, labels kept, owner references dropped: Kueue's cloneForCreate), then the
    job's copy with the label kueue.x-k8s.io/prebuilt-workload-name. The operator adopts that Workload, creates none,
    and the real Kueue admits it. The manager cluster itself is not here."""
    cp = control_plane
    local_queue(cp, namespace, queue)
    manager_job = queued_job("copied", nodes=2)
    manager_job["metadata"].update(namespace=namespace, uid="0b5c1e5e-aaaa-bbbb-cccc-0123456789ab")  # the manager's job
    parsed = parse_job(manager_job)
    prebuilt = build_kueue_workload(parsed, build_worker_pod(parsed, 0, RenderContext(), 0))
    del prebuilt["metadata"]["ownerReferences"]
    cp.apply(prebuilt, namespace)
    copied = queued_job("copied", nodes=2)
    copied["metadata"]["labels"][PREBUILT_WORKLOAD_LABEL] = prebuilt["metadata"]["name"]
    cp.apply(copied, namespace)
    job = wait_phase(cp, operator, namespace, "copied", "Running", timeout=90)
    wl = workload(cp, namespace, "copied")  # exactly one: the prebuilt, adopted
    assert wl["metadata"]["name"] == prebuilt["metadata"]["name"]
    assert [(r["uid"], r.get("controller")) for r in wl["metadata"]["ownerReferences"]] == [(job["metadata"]["uid"], True)]
    assert condition(wl, "Admitted")["status"] == "True" and len(live_pods(job_pods(cp, namespace, "copied"))) == 2
    finish_gang(cp, namespace, "copied")
    wait_phase(cp, operator, namespace, "copied", "Succeeded")
    cp.wait_for(lambda: condition(workload(cp, namespace, "copied"), "Finished").get("status") == "True",
                timeout=30, what="the adopted Workload Finished")


def test_two_jobs_that_do_not_fit_together_run_one_after_the_other(control_plane, operator, queue, namespace):
    cp = control_plane
    local_queue(cp, namespace, queue)
    cp.apply([queued_job("first", nodes=2), queued_job("second", nodes=2)], namespace)  # 16 + 16 GPUs > 24
    overlap = Overlap(cp, namespace)
    running = overlap.wait(lambda: [n for n in ("first", "second") if get_job(cp, namespace, n).get("status", {}).get("phase") == "Running"],
                           timeout=90, what="one of the jobs Running")
    assert len(running) == 1, running
    one, other = running[0], ({"first", "second"} - set(running)).pop()
    for _ in range(10):  # the other one waits, holding nothing
        overlap.sample()
        assert job_pods(cp, namespace, other) == []
        time.sleep(0.3)
    waiting = get_job(cp, namespace, other)
    assert waiting["status"]["phase"] == "Pending" and condition(waiting, "Queued")["status"] == "True"

    finish_gang(cp, namespace, one)
    overlap.wait(lambda: get_job(cp, namespace, one)["status"]["phase"] == "Succeeded", timeout=60, what=f"{one} Succeeded")
    overlap.wait(lambda: get_job(cp, namespace, other)["status"]["phase"] == "Running", timeout=90, what=f"{other} Running")
    finish_gang(cp, namespace, other)
    overlap.wait(lambda: get_job(cp, namespace, other)["status"]["phase"] == "Succeeded", timeout=60, what=f"{other} Succeeded")
    print(f"{overlap.samples} samples of the pods", file=sys.stderr)
    assert overlap.together == []  # never interleaved


def test_higher_priority_job_preempts_and_the_preempted_one_comes_back(control_plane, operator, queue, namespace):
    cp = control_plane
    local_queue(cp, namespace, queue)
    cp.apply(queued_job("low", nodes=2, priority="llmto-e2e-low"), namespace)
    wait_phase(cp, operator, namespace, "low", "Running", timeout=90)
    assert workload(cp, namespace, "low")["spec"]["priority"] == 100
    first_gang = {p["metadata"]["uid"] for p in job_pods(cp, namespace, "low")}

    cp.apply(queued_job("high", nodes=2, priority="llmto-e2e-high"), namespace)
    overlap = Overlap(cp, namespace)
    low = overlap.wait(lambda: (j := get_job(cp, namespace, "low")) and condition(j, "Queued").get("status") == "True" and j,
                       timeout=60, what="the low-priority job evicted")
    assert condition(low, "Queued")["reason"] == "Preempted"
    assert "SIGTERM" in condition(low, "Queued")["message"]
    overlap.wait(lambda: get_job(cp, namespace, "high").get("status", {}).get("phase") == "Running", timeout=90, what="high Running")
    low = get_job(cp, namespace, "low")
    assert low["status"]["phase"] == "Pending" and low["status"]["restarts"] == 1 and low["status"]["countedRestarts"] == 0
    assert job_pods(cp, namespace, "low") == []
    assert "Evicted" in {e["reason"] for e in events(cp, namespace, "low")}
    assert condition(workload(cp, namespace, "low"), "QuotaReserved")["status"] == "False"  # the quota was given back

    finish_gang(cp, namespace, "high")
    overlap.wait(lambda: get_job(cp, namespace, "high")["status"]["phase"] == "Succeeded", timeout=60, what="high Succeeded")
    low = overlap.wait(lambda: (j := get_job(cp, namespace, "low"))["status"]["phase"] == "Running" and j, timeout=90, what="low Running again")
    pods = job_pods(cp, namespace, "low")
    assert {p["metadata"]["labels"]["llmtraining.dev/restart"] for p in pods} == {"1"}  # a new gang
    assert not {p["metadata"]["uid"] for p in pods} & first_gang
    finish_gang(cp, namespace, "low")
    low = overlap.wait(lambda: (j := get_job(cp, namespace, "low"))["status"]["phase"] == "Succeeded" and j, timeout=60, what="low Succeeded")
    assert low["status"]["countedRestarts"] == 0  # the preemption was not a failure
    assert overlap.together == []


# ----------------------------------------------------------------------- Topology Aware Scheduling (issue 20)
BLOCK, RACK = "llmtraining.dev/e2e-block", "llmtraining.dev/e2e-rack"
TAS_FLAVOR, TOPOLOGY = "llmto-e2e-tas", "llmto-e2e-topology"


@pytest.fixture
def tas_queue(control_plane, kueue, namespace):
    """The 3 kwok nodes in two blocks (b1: nodes 0 and 1, 16 GPUs; b2: node 2, 8 GPUs), a rack each; a Topology of
    blocks and racks, a ResourceFlavor on it, and a ClusterQueue for this namespace whose quota (twice the GPUs) is never
    what a gang waits for: the free blocks are."""
    cp = control_plane
    nodes = sorted(n["metadata"]["name"] for n in cp.get_json("nodes", "-l", cp.GPU_NODE_SELECTOR)["items"])
    assert len(nodes) == 3, nodes
    blocks = {nodes[0]: "b1", nodes[1]: "b1", nodes[2]: "b2"}
    for i, node in enumerate(nodes):
        cp.kubectl("label", "node", node, "--overwrite", f"{BLOCK}={blocks[node]}", f"{RACK}=r{i}")
    name = f"tas-{namespace}"[:63]
    cp.apply([
        {"apiVersion": KUEUE, "kind": "Topology", "metadata": {"name": TOPOLOGY}, "spec": {"levels": [{"nodeLabel": BLOCK}, {"nodeLabel": RACK}]}},
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": TAS_FLAVOR},
         "spec": {"nodeLabels": FLAVOR_NODE_LABELS, "topologyName": TOPOLOGY}},
        {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [{"coveredResources": ["nvidia.com/gpu"],
                                "flavors": [{"name": TAS_FLAVOR, "resources": [{"name": "nvidia.com/gpu", "nominalQuota": 2 * GPUS}]}]}]}},
    ])
    cp.wait_for(lambda: condition(cp.get_json("clusterqueue", name), "Active").get("status") == "True", timeout=60, what=f"ClusterQueue {name} active")
    local_queue(cp, namespace, name)
    try:
        yield blocks
    finally:
        cp.kubectl("delete", "clusterqueue", name, "--wait=false", "--ignore-not-found", check=False)
        for node in nodes:
            cp.kubectl("label", "node", node, f"{BLOCK}-", f"{RACK}-", check=False)


def placed_blocks(cp, namespace, name, blocks, count) -> set[str]:
    pods = cp.wait_for(lambda: (p := [q for q in job_pods(cp, namespace, name) if q["spec"].get("nodeName")]) and len(p) == count and p,
                       timeout=90, what=f"{count} workers of {name} bound")
    return {blocks[p["spec"]["nodeName"]] for p in pods}


def test_topology_required_block_lands_in_one_block_waits_whole_when_none_is_free_and_preferred_spreads(control_plane, operator, tas_queue, namespace):
    cp, blocks = control_plane, tas_queue
    first = queued_job("block4", nodes=4)
    first["spec"].update(slotsPerNode=4, gang={"topology": {"required": BLOCK}})  # 16 GPUs: only block b1 holds them
    cp.apply(first, namespace)
    assert placed_blocks(cp, namespace, "block4", blocks, 4) == {"b1"}
    for pod in job_pods(cp, namespace, "block4"):  # Kueue's ungater placed them: it lifted the gate and wrote the domain
        assert not pod["spec"].get("schedulingGates") and pod["spec"]["nodeSelector"].get(BLOCK) == "b1", pod["spec"]
    wl = workload(cp, namespace, "block4")
    assert wl["spec"]["podSets"][0]["topologyRequest"]["required"] == BLOCK
    assert wait_phase(cp, operator, namespace, "block4", "Running")["status"]["conditions"]
    assert cp.wait_for(lambda: get_job(cp, namespace, "block4")["status"].get("placement"), timeout=30,
                       what="block4's status.placement") == f"{BLOCK}=b1 (all 4 workers)"

    second = queued_job("block3", nodes=3)
    second["spec"].update(slotsPerNode=4, gang={"topology": {"required": BLOCK}})  # 12 GPUs: b1 is taken, b2 has 8
    cp.apply(second, namespace)
    pending = cp.wait_for(lambda: condition(workload(cp, namespace, "block3"), "QuotaReserved").get("message"), timeout=60,
                          what="block3 told why it waits")
    assert f'topology "{TOPOLOGY}" allows to fit only' in pending and "out of 3 pod(s)" in pending, pending
    cp.wait_for(lambda: any("allows to fit only" in c.get("message", "") for c in get_job(cp, namespace, "block3")["status"].get("conditions", [])),
                timeout=30, what="the job says why it waits")
    assert [p for p in job_pods(cp, namespace, "block3") if p["spec"].get("nodeName")] == []  # waits whole

    finish_gang(cp, namespace, "block4")
    wait_phase(cp, operator, namespace, "block4", "Succeeded")
    assert placed_blocks(cp, namespace, "block3", blocks, 3) == {"b1"}

    spread = queued_job("spread3", nodes=3)  # 12 GPUs, 4 left in b1 and 8 in b2: preferred takes both blocks
    spread["spec"].update(slotsPerNode=4, gang={"topology": {"preferred": BLOCK}})
    cp.apply(spread, namespace)
    assert placed_blocks(cp, namespace, "spread3", blocks, 3) == {"b1", "b2"}
