"""spec.gang.topology without Kueue (issue 20): the PodGroup's schedulingConstraints.topology where the API server
serves it (kube 1.36+, gate TopologyAwareWorkloadScheduling), and the TopologyPlaced condition / TopologyUnavailable
failure where no placement path does. Tables; the Kueue path is tests/unit/test_kueue_topology.py."""

from __future__ import annotations

import pytest

from llm_operator.conditions import TOPOLOGY_PLACED, find
from llm_operator.lifecycle import decide
from llm_operator.render import RenderContext
from llm_operator.render.gang import KUBERNETES_API, build_gang_objects, plan_gang
from llm_operator.render.topology import plan_topology

from test_gang import ALL_APIS, NOW, job_of

RACK = "topology.kubernetes.io/rack"
SERVED = RenderContext(gang_apis=frozenset({KUBERNETES_API}), pod_group_topology=True)
NOT_SERVED = RenderContext(gang_apis=frozenset({KUBERNETES_API}))


def pod_group(job, ctx):
    return next(o for o in build_gang_objects(job, plan_gang(job, ctx)) if o["kind"] == "PodGroup")


def test_required_topology_is_the_pod_groups_constraint_where_served(manifest):
    job = job_of(manifest, scheduler="kubernetes", topology={"required": RACK})
    assert pod_group(job, SERVED)["spec"]["schedulingConstraints"] == {"topology": [{"key": RACK}]}
    assert "schedulingConstraints" not in pod_group(job, NOT_SERVED)["spec"]
    # kube-scheduler's constraint is hard: a preferred level is never written there
    assert "schedulingConstraints" not in pod_group(job_of(manifest, scheduler="kubernetes", topology={"preferred": RACK}), SERVED)["spec"]
    assert "schedulingConstraints" not in pod_group(job_of(manifest, scheduler="kubernetes"), SERVED)["spec"]


@pytest.mark.parametrize("gang, ctx, queued, reason, honoured, fails", [
    ({"scheduler": "kubernetes", "topology": {"required": RACK}}, SERVED, False, "PodGroupTopology", True, False),
    ({"topology": {"required": RACK}}, SERVED, False, "PodGroupTopology", True, False),  # auto picks kubernetes
    ({"scheduler": "kubernetes", "topology": {"required": RACK}}, NOT_SERVED, False, "TopologyUnavailable", False, True),
    ({"scheduler": "volcano", "topology": {"required": RACK}}, RenderContext(gang_apis=ALL_APIS, pod_group_topology=True), False,
     "TopologyUnavailable", False, True),
    ({"scheduler": "none", "topology": {"required": RACK}}, SERVED, True, "KueueTopologyAwareScheduling", True, False),
    ({"scheduler": "kubernetes", "topology": {"preferred": RACK}}, SERVED, False, "TopologyUnavailable", False, False),
    ({"scheduler": "kubernetes", "topology": {"preferred": RACK}}, SERVED, True, "KueueTopologyAwareScheduling", True, False),
])
def test_which_path_honours_the_topology(manifest, gang, ctx, queued, reason, honoured, fails):
    job = job_of(manifest, **gang)
    plan = plan_topology(job, plan_gang(job, ctx), queued)
    assert (plan.reason, plan.honoured, plan.fails) == (reason, honoured, fails)
    kind = next(iter(gang["topology"]))
    assert f"spec.gang.topology.{kind} ({RACK})" in plan.message


def test_no_topology_no_plan(manifest):
    job = job_of(manifest, scheduler="kubernetes")
    assert plan_topology(job, plan_gang(job, SERVED), False) is None


@pytest.mark.parametrize("topology, ctx, status, phase", [
    ({"required": RACK}, SERVED, "True", "Pending"),
    ({"required": RACK}, NOT_SERVED, "False", "Failed"),
    ({"preferred": RACK}, NOT_SERVED, "False", "Pending"),  # runs without it, and says so
])
def test_topology_placed_condition_and_failure(manifest, topology, ctx, status, phase):
    job = job_of(manifest, scheduler="kubernetes", topology=topology)
    decision = decide(job, 1, [], {}, NOW, observed_since=NOW, gang_plan=plan_gang(job, ctx))
    assert find(decision.status["conditions"], TOPOLOGY_PLACED)["status"] == status
    assert decision.status["phase"] == phase and decision.create_pods == (phase == "Pending")
    if phase == "Failed":
        assert decision.status["failure"]["reason"] == "TopologyUnavailable"
        assert "spec.gang.topology.required" in decision.status["failure"]["message"]


def test_a_job_without_topology_has_no_topology_condition(manifest):
    job = job_of(manifest, scheduler="kubernetes")
    decision = decide(job, 1, [], {}, NOW, observed_since=NOW, gang_plan=plan_gang(job, SERVED))
    assert find(decision.status["conditions"], TOPOLOGY_PLACED) is None
