"""spec.gang.topology without Kueue (issue 20), on the real control plane: kube-scheduler's own gang (gang.scheduler
kubernetes) with the PodGroup's schedulingConstraints.topology, which the API server keeps and the scheduler honours
only with the alpha gate TopologyAwareWorkloadScheduling. The session's control plane runs without it: the tests
here see what a job gets then, and one module fixture restarts the API server and the scheduler with the gate (and
the operator, whose start-up discovery decides), then restores them.

The 3 kwok nodes (8 GPUs each) are put in two blocks: b1 = node 0 (8 GPUs), b2 = nodes 1 and 2 (16 GPUs).
"""

from __future__ import annotations

import time

import pytest
from operator_harness import get_job, job_manifest, job_pods, wait_phase

from llm_operator.placement import placement

BLOCK = "llmtraining.dev/e2e-block"
GATES_ON = "GenericWorkload=true,TopologyAwareWorkloadScheduling=true"
SETTLE_SECONDS = 5  # after the scheduler has tried the gang: long enough for a partial binding to show


@pytest.fixture(scope="module")
def blocks(control_plane):
    cp = control_plane
    nodes = sorted(n["metadata"]["name"] for n in cp.get_json("nodes", "-l", cp.GPU_NODE_SELECTOR)["items"])
    assert len(nodes) == 3, nodes
    of = {nodes[0]: "b1", nodes[1]: "b2", nodes[2]: "b2"}
    for node, block in of.items():
        cp.kubectl("label", "node", node, "--overwrite", f"{BLOCK}={block}")
    try:
        yield of
    finally:
        for node in nodes:
            cp.kubectl("label", "node", node, f"{BLOCK}-", check=False)


def topology_job(name: str, nodes: int, slots: int, **topology) -> dict:
    return job_manifest(name, nodes=nodes, slots=slots, podTemplate={"nodeSelector": {"type": "kwok"}},
                        gang={"scheduler": "kubernetes", "topology": topology})


def condition(job: dict, type_: str) -> dict:
    return next((c for c in job["status"].get("conditions", []) if c["type"] == type_), {})


def bound_blocks(pods: list[dict], blocks: dict[str, str]) -> list[str]:
    return sorted(blocks[p["spec"]["nodeName"]] for p in pods if p["spec"].get("nodeName"))


def tried(pods: list[dict]) -> bool:
    return any(c["type"] == "PodScheduled" and c["status"] == "False" for p in pods for c in p.get("status", {}).get("conditions", []))


def test_without_the_gate_required_fails_naming_the_field_and_preferred_runs_saying_so(control_plane, operator, blocks, namespace):
    cp = control_plane
    cp.apply(topology_job("required", nodes=2, slots=4, required=BLOCK), namespace)
    job = wait_phase(cp, operator, namespace, "required", "Failed")
    assert job["status"]["failure"]["reason"] == "TopologyUnavailable"
    for said in (f"spec.gang.topology.required ({BLOCK})", "schedulingConstraints.topology", "TopologyAwareWorkloadScheduling"):
        assert said in job["status"]["failure"]["message"], job["status"]["failure"]
    assert job_pods(cp, namespace, "required") == []  # nothing ran unplaced

    cp.apply(topology_job("preferred", nodes=3, slots=8, preferred=BLOCK), namespace)  # 24 GPUs: every node, both blocks
    job = wait_phase(cp, operator, namespace, "preferred", "Running")
    placed = condition(job, "TopologyPlaced")
    assert (placed["status"], placed["reason"]) == ("False", "TopologyUnavailable") and "the gang runs without it" in placed["message"]
    assert bound_blocks(job_pods(cp, namespace, "preferred"), blocks) == ["b1", "b2", "b2"]
    assert "schedulingConstraints" not in cp.get_json("podgroups.scheduling.k8s.io", "preferred", "-n", namespace)["spec"]
    # status.placement says each worker's domain: as placement.py (unit-tested) reads the pods and the nodes from the API
    pods = job_pods(cp, namespace, "preferred")
    labels = {n["metadata"]["name"]: n["metadata"]["labels"] for n in cp.get_json("nodes", "-l", cp.GPU_NODE_SELECTOR)["items"]}
    line = wait_for_placement(cp, namespace, "preferred")
    assert line == placement(BLOCK, 3, pods, labels) and line.startswith(f"{BLOCK}: ") and "b1 (worker" in line and "b2 (worker" in line
    cp.kubectl("-n", namespace, "delete", "ltj", "preferred", "--wait=true", timeout=120)  # its 24 GPUs are the next test's
    cp.wait_for(lambda: not job_pods(cp, namespace, "preferred"), timeout=60, what="preferred's pods gone")


def wait_for_placement(cp, namespace: str, name: str) -> str:
    return cp.wait_for(lambda: get_job(cp, namespace, name)["status"].get("placement"), timeout=30, what=f"{name}'s status.placement")


@pytest.fixture(scope="module")
def topology_gate(control_plane, operator):
    """The API server and kube-scheduler restarted with TopologyAwareWorkloadScheduling, the operator after them (its
    start-up discovery dry-runs a PodGroup); all restored afterwards."""
    cp = control_plane
    started = time.monotonic()
    operator.stop()
    try:
        for component in ("kube-apiserver", "kube-scheduler"):
            cp.restart(component, feature_gates=GATES_ON)
        operator.start()
        print(f"\ngate on: API server, scheduler and operator restarted in {time.monotonic() - started:.1f}s")
        yield
    finally:
        operator.stop()
        for component in ("kube-apiserver", "kube-scheduler"):
            cp.restart(component)
        operator.start()


def test_with_the_gate_kube_scheduler_keeps_a_required_gang_in_one_block(control_plane, operator, blocks, topology_gate, namespace):
    cp = control_plane
    assert "PodGroup schedulingConstraints.topology (gate TopologyAwareWorkloadScheduling): kept by the API server" in operator.log_path.read_text()
    # 3 x 6 GPUs: the cluster holds it (one worker per node) but no block does (b2 has 16): it waits whole
    cp.apply(topology_job("wide", nodes=3, slots=6, required=BLOCK), namespace)
    pods = cp.wait_for(lambda: (p := job_pods(cp, namespace, "wide")) and len(p) == 3 and tried(p) and p, timeout=60,
                       what="wide's gang created and tried by the scheduler")
    time.sleep(SETTLE_SECONDS)
    pods = job_pods(cp, namespace, "wide")
    assert bound_blocks(pods, blocks) == [], "a gang no block can hold must not be bound, not even in part"
    pod_group = cp.get_json("podgroups.scheduling.k8s.io", "wide", "-n", namespace)
    assert pod_group["spec"]["schedulingConstraints"] == {"topology": [{"key": BLOCK}]}
    job = get_job(cp, namespace, "wide")
    assert (condition(job, "TopologyPlaced")["status"], condition(job, "TopologyPlaced")["reason"]) == ("True", "PodGroupTopology")
    unschedulable = next(c for p in pods for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
    print(f"wide (3 x 6 GPUs, required {BLOCK}): none bound; the scheduler says: {unschedulable.get('message')}")
    cp.kubectl("-n", namespace, "delete", "ltj", "wide", "--wait=true", timeout=120)
    cp.wait_for(lambda: not job_pods(cp, namespace, "wide"), timeout=60, what="wide's pods gone")

    # 4 x 4 GPUs: only b2 holds it; without the constraint the scheduler may use node 0 (b1) as well
    cp.apply(topology_job("block", nodes=4, slots=4, required=BLOCK), namespace)
    wait_phase(cp, operator, namespace, "block", "Running")
    assert bound_blocks(job_pods(cp, namespace, "block"), blocks) == ["b2"] * 4
    assert wait_for_placement(cp, namespace, "block") == f"{BLOCK}=b2 (all 4 workers)"
