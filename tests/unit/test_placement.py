"""status.placement (issue 20): where a gang with spec.gang.topology landed, from its pods' nodes and their labels. Table."""

from __future__ import annotations

import pytest

from llm_operator.placement import nodes_of, placement

BLOCK = "cloud.provider.com/topology-block"
NODES = {"n0": {BLOCK: "b1"}, "n1": {BLOCK: "b1"}, "n2": {BLOCK: "b2"}, "n3": {BLOCK: "b2"}, "bare": {}}


def pod(rank: int, node: str | None) -> dict:
    return {"metadata": {"name": f"j-worker-{rank}", "labels": {"llmtraining.dev/node-rank": str(rank)}}, "spec": {"nodeName": node}}


@pytest.mark.parametrize("nodes, expected", [
    (["n0", "n1", "n0", "n1"], f"{BLOCK}=b1 (all 4 workers)"),
    (["n2"], f"{BLOCK}=b2 (1 worker)"),
    (["n0", "n1", "n2"], f"{BLOCK}: b1 (workers 0-1), b2 (worker 2)"),
    (["n2", "n0", "n3", "n1"], f"{BLOCK}: b2 (workers 0, 2), b1 (workers 1, 3)"),  # domains in the order of their lowest rank
    (["n0", "bare"], f"{BLOCK}: b1 (worker 0), <unlabelled> (worker 1)"),  # a node outside every domain is said, not hidden
])
def test_each_workers_domain_or_one_line_for_one_domain(nodes, expected):
    gang = [pod(rank, node) for rank, node in enumerate(nodes)]
    assert placement(BLOCK, len(nodes), gang, NODES) == expected


@pytest.mark.parametrize("gang, labels", [
    ([pod(0, "n0"), pod(1, None)], NODES),  # worker 1 not bound yet
    ([pod(0, "n0")], NODES),  # worker 1 not created yet
    ([pod(0, "n0"), pod(1, "n9")], NODES),  # n9's labels not read
    ([], NODES),
])
def test_no_line_until_every_worker_is_bound_on_a_known_node(gang, labels):
    assert placement(BLOCK, 2, gang, labels) is None


def test_the_nodes_whose_labels_are_needed():
    assert nodes_of([pod(0, "n1"), pod(1, "n0"), pod(2, None), pod(3, "n1")]) == ["n0", "n1"]
