"""spec.gang.topology with Kueue's Topology Aware Scheduling (issue 20): the Workload's topologyRequest and what each
worker pod carries for Kueue's TopologyUngater (names from Kueue v0.17: apis/kueue/v1beta2/topology_types.go,
pkg/constants/constants.go, pkg/util/tas/tas.go). Pure, and through the reconciler on the fake API server."""

from __future__ import annotations

import pytest

from llm_operator import kueue
from llm_operator.api import parse_job
from llm_operator.render import RenderContext, build_worker_pod

from test_kueue_workload import ADMISSION, QUEUE, kueue_reconciler
from test_reconcile import reconcile

BLOCK = "cloud.provider.com/topology-block"


def queued(manifest, topology=None):
    manifest["metadata"]["labels"] = {kueue.QUEUE_NAME_LABEL: QUEUE}
    if topology is not None:
        manifest["spec"]["gang"] = {"topology": topology}
    return manifest


@pytest.mark.parametrize("topology, request_", [
    (None, None),
    ({"required": BLOCK}, {"required": BLOCK, "podIndexLabel": "llmtraining.dev/node-rank"}),
    ({"preferred": "topology.kubernetes.io/rack"}, {"preferred": "topology.kubernetes.io/rack", "podIndexLabel": "llmtraining.dev/node-rank"}),
])
def test_the_podset_asks_for_the_topology_in_rank_order(manifest, topology, request_):
    job = parse_job(queued(manifest, topology))
    pod_set = kueue.build_workload(job, build_worker_pod(job, 0, RenderContext()))["spec"]["podSets"][0]
    assert pod_set.get("topologyRequest") == request_
    # the rank label the ungater orders by is on the template (and on every pod)
    assert pod_set["template"]["metadata"]["labels"]["llmtraining.dev/node-rank"] == "0"


@pytest.mark.parametrize("topology, annotation", [
    ({"required": BLOCK}, "kueue.x-k8s.io/podset-required-topology"),
    ({"preferred": BLOCK}, "kueue.x-k8s.io/podset-preferred-topology"),
])
def test_a_worker_carries_what_the_topology_ungater_needs(manifest, topology, annotation):
    job = parse_job(queued(manifest, topology))
    worker = build_worker_pod(job, 1, RenderContext())
    gated = kueue.gate_for_topology(worker, job)
    assert gated["metadata"]["labels"]["kueue.x-k8s.io/podset"] == "workers"
    assert gated["metadata"]["annotations"]["kueue.x-k8s.io/workload"] == kueue.workload_name(job)
    assert gated["metadata"]["annotations"][annotation] == BLOCK
    assert gated["spec"]["schedulingGates"] == [{"name": "kueue.x-k8s.io/topology"}]
    assert kueue.gate_for_topology(gated, job)["spec"]["schedulingGates"] == [{"name": "kueue.x-k8s.io/topology"}]  # once
    assert "schedulingGates" not in worker["spec"] and "kueue.x-k8s.io/podset" not in worker["metadata"]["labels"]  # untouched


def test_without_topology_a_worker_is_not_gated(manifest):
    job = parse_job(queued(manifest))
    worker = build_worker_pod(job, 0, RenderContext())
    assert kueue.gate_for_topology(worker, job) is worker


def test_admitted_gang_is_created_gated_on_the_flavor(manifest):
    body = queued(manifest, {"required": BLOCK})
    reconciler, _ = kueue_reconciler(body)
    kube = reconciler.kube
    reconcile(reconciler, body)
    assert kube.workload()["spec"]["podSets"][0]["topologyRequest"]["required"] == BLOCK and kube.pods() == []
    kube.kueue_sets(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"), admission=ADMISSION)
    reconcile(reconciler, body)
    assert len(kube.pods()) == 2
    for worker in kube.pods():
        assert worker["spec"]["schedulingGates"] == [{"name": "kueue.x-k8s.io/topology"}]
        assert worker["spec"]["nodeSelector"] == {"gpu": "h100"}  # the flavor's node labels, as without topology
        assert worker["metadata"]["annotations"]["kueue.x-k8s.io/workload"] == kube.workload()["metadata"]["name"]


# ============================================================== spec.managedBy: MultiKueue's manager cluster
def test_a_job_managed_by_multikueue_gets_its_workload_and_nothing_else(manifest):
    body = queued(manifest)
    body["spec"]["managedBy"] = "kueue.x-k8s.io/multikueue"
    reconciler, events = kueue_reconciler(body)
    kube = reconciler.kube
    reconcile(reconciler, body)
    wl = kube.workload()
    assert wl["metadata"]["ownerReferences"][0]["controller"] is True and kube.pods() == []
    kube.kueue_sets(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"), admission=ADMISSION)
    kube.calls.clear()
    reconcile(reconciler, body)
    assert kube.pods() == [] and kube.calls == [] and events == []  # no pods, no status: the worker cluster's copy runs it
    assert "status" not in body
