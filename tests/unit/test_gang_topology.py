"""spec.gang.topology without Kueue (issue 20): the PodGroup's schedulingConstraints.topology where the API server
serves it (kube 1.36+, gate TopologyAwareWorkloadScheduling), and the TopologyPlaced condition / TopologyUnavailable
failure where no placement path does. Tables; the Kueue path is tests/unit/test_kueue_topology.py."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from llm_operator.conditions import TOPOLOGY_PLACED, find
from llm_operator.lifecycle import decide
from llm_operator.render import RenderContext
from llm_operator.main import discover_pod_group_topology
from llm_operator.render.gang import KUBERNETES_API, TOPOLOGY_PROBE_KEY, build_gang_objects, keeps_topology, plan_gang, topology_probe_pod_group
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


# ------------------------------------------------------------------ start-up discovery of the PodGroup topology field
@pytest.mark.parametrize("stored, kept", [
    (topology_probe_pod_group("default"), True),  # what a gate-on API server returns: the field as sent
    ({**topology_probe_pod_group("default"), "spec": {"schedulingPolicy": {"gang": {"minCount": 1}}}}, False),  # dropped: gate off
    ({"spec": {"schedulingConstraints": {}}}, False),
    ({"spec": {"schedulingConstraints": {"topology": [{"key": "other"}]}}}, False),
    ({}, False),
])
def test_the_dry_run_tells_whether_the_field_is_kept(stored, kept):
    assert keeps_topology(stored) is kept


class FakeKube:
    def __init__(self, *answers):
        self.answers, self.sent = list(answers), []

    def dry_run_create(self, obj):
        self.sent.append(obj)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_discovery_dry_runs_a_probe_in_the_given_namespace_and_reads_it_back(monkeypatch):
    monkeypatch.setattr("llm_operator.main.time.sleep", lambda s: None)
    echo = topology_probe_pod_group("team")
    kube = FakeKube(ApiException(status=503, reason="ServiceUnavailable"), echo)
    assert discover_pod_group_topology(kube, frozenset({KUBERNETES_API}), "team") is True
    assert [o["metadata"]["namespace"] for o in kube.sent] == ["team", "team"]  # retried after the 503
    assert kube.sent[0]["spec"]["schedulingConstraints"] == {"topology": [{"key": TOPOLOGY_PROBE_KEY}]}


@pytest.mark.parametrize("answer", [
    {"spec": {"schedulingPolicy": {"gang": {"minCount": 1}}}},  # the gate is off: the field silently dropped
    ApiException(status=403, reason="Forbidden"),  # no right to create PodGroups in that namespace
    ApiException(status=404, reason="NotFound"),  # no such namespace
])
def test_discovery_says_not_served_when_dropped_or_refused(answer):
    assert discover_pod_group_topology(FakeKube(answer), frozenset({KUBERNETES_API}), "default") is False


def test_no_probe_without_the_pod_group_api():
    kube = FakeKube()
    assert discover_pod_group_topology(kube, frozenset(), "default") is False and kube.sent == []
