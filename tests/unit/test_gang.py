"""Gang scheduling: the choice of scheduler (a pure function of the spec and the discovered APIs), the group objects,
what the worker pods carry, the GangScheduled condition, and the reconciler creating the group before the pods."""

from __future__ import annotations

import copy
import subprocess
import sys
from datetime import datetime, timezone

import pytest
import yaml

from llm_operator.api import SpecError, parse_job
from llm_operator.conditions import GANG_SCHEDULED, find
from llm_operator.lifecycle import decide
from llm_operator.render import RenderContext, render_children
from llm_operator.render.gang import (
    COSCHEDULING_API,
    KUBERNETES_API,
    VOLCANO_API,
    build_gang_objects,
    default_gang_scheduler,
    plan_gang,
    pod_gang_fields,
)
from llm_operator.render.resources import scale_quantity

from test_reconcile import RUNNING, make_reconciler, reconcile

ALL_APIS = frozenset({KUBERNETES_API, VOLCANO_API, COSCHEDULING_API})
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def job_of(manifest, **gang):
    manifest = copy.deepcopy(manifest)
    if gang:
        manifest["spec"]["gang"] = gang
    return parse_job(manifest)


# ------------------------------------------------------------------------------------------ the choice
@pytest.mark.parametrize("configured, apis, expected", [
    ("auto", frozenset({KUBERNETES_API}), "kubernetes"),
    ("auto", frozenset(), "none"),
    ("auto", frozenset({VOLCANO_API}), "none"),  # Volcano is never guessed: its pods need another scheduler
    ("volcano", frozenset(), "volcano"),
    ("none", ALL_APIS, "none"),
    ("coscheduling", ALL_APIS, "coscheduling"),
])
def test_default_gang_scheduler(configured, apis, expected):
    assert default_gang_scheduler(configured, apis) == expected


@pytest.mark.parametrize("gang, apis, default, scheduler, reason, available", [
    ({}, frozenset({KUBERNETES_API}), "auto", "kubernetes", "KubernetesWorkload", True),
    ({}, frozenset(), "auto", "none", "GangSchedulingUnavailable", True),
    ({}, ALL_APIS, "none", "none", "Disabled", True),
    ({"scheduler": "none"}, ALL_APIS, "auto", "none", "Disabled", True),
    ({"scheduler": "volcano"}, ALL_APIS, "auto", "volcano", "VolcanoPodGroup", True),
    ({"scheduler": "coscheduling"}, ALL_APIS, "auto", "coscheduling", "CoschedulingPodGroup", True),
    ({"scheduler": "kubernetes"}, frozenset(), "auto", "kubernetes", "GangSchedulingUnavailable", False),
    ({"scheduler": "volcano"}, frozenset({KUBERNETES_API}), "auto", "volcano", "GangSchedulingUnavailable", False),
    ({}, frozenset({COSCHEDULING_API}), "coscheduling", "coscheduling", "CoschedulingPodGroup", True),
])
def test_plan_gang(manifest, gang, apis, default, scheduler, reason, available):
    plan = plan_gang(job_of(manifest, **gang), RenderContext(gang_apis=apis, default_gang_scheduler=default))
    assert (plan.scheduler, plan.reason, plan.available) == (scheduler, reason, available)
    if not available:
        assert "spec.gang.scheduler" in plan.message


@pytest.mark.parametrize("gang, nodes, expected", [({}, 4, 4), ({"minAvailable": 3}, 4, 3), ({"minAvailable": 1}, 1, 1)])
def test_min_member_is_all_workers_unless_min_available(manifest, gang, nodes, expected):
    manifest["spec"].update(nodes=nodes, slotsPerNode=1)
    manifest["spec"]["training"].pop("globalBatchSize")
    plan = plan_gang(job_of(manifest, scheduler="kubernetes", **gang), RenderContext(gang_apis=ALL_APIS))
    assert plan.min_member == expected


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("gang, message", [
    ({"minAvailable": 3}, "gang.minAvailable (3) must not exceed nodes (2)"),
    ({"minAvailable": 0}, "spec.gang.minAvailable: Input should be greater than or equal to 1"),
    ({"scheduler": "none", "minAvailable": 1}, "gang.minAvailable needs a gang scheduler (gang.scheduler is none)"),
    ({"scheduler": "slurm"}, "spec.gang.scheduler: Input should be 'kubernetes', 'volcano', 'coscheduling' or 'none'"),
    ({"minCount": 2}, "spec.gang.minCount: Extra inputs are not permitted"),
])
def test_bad_gang_spec_names_the_field(manifest, gang, message):
    with pytest.raises(SpecError) as err:
        job_of(manifest, **gang)
    assert message in str(err.value)


# --------------------------------------------------------------------------------------------- render
def render(manifest, apis=ALL_APIS, **gang):
    job = job_of(manifest, **gang)
    return render_children(job, RenderContext(gang_apis=apis))


def kinds(children):
    return [(c["apiVersion"], c["kind"]) for c in children if c["kind"] not in ("ConfigMap", "Service", "Pod")]


@pytest.mark.parametrize("scheduler, objects", [
    ("kubernetes", [(KUBERNETES_API, "Workload"), (KUBERNETES_API, "PodGroup")]),
    ("volcano", [(VOLCANO_API, "PodGroup")]),
    ("coscheduling", [(COSCHEDULING_API, "PodGroup")]),
    ("none", []),
])
def test_gang_objects_come_before_the_pods(manifest, scheduler, objects):
    children = render(manifest, scheduler=scheduler)
    assert kinds(children) == objects
    first_pod = next(i for i, c in enumerate(children) if c["kind"] == "Pod")
    assert all(i < first_pod for i, c in enumerate(children) if c["kind"] in ("Workload", "PodGroup"))
    for obj in children[:first_pod]:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == manifest["metadata"]["uid"]


def test_kubernetes_workload_and_pod_group(manifest):
    manifest["spec"]["podTemplate"] = {"priorityClassName": "training-high"}
    workload, pod_group = build_gang_objects(job := job_of(manifest, scheduler="kubernetes"), plan_gang(job, RenderContext(gang_apis=ALL_APIS)))
    assert workload["metadata"]["name"] == pod_group["metadata"]["name"] == "demo"
    assert workload["spec"] == {
        "controllerRef": {"apiGroup": "llmtraining.dev", "kind": "LLMTrainingJob", "name": "demo"},
        "podGroupTemplates": [{"name": "workers", "schedulingPolicy": {"gang": {"minCount": 2}}, "disruptionMode": {"all": {}},
                               "priorityClassName": "training-high"}],
    }
    assert pod_group["spec"] == {"workloadRef": {"workloadName": "demo", "templateName": "workers"},
                                 "schedulingPolicy": {"gang": {"minCount": 2}}, "disruptionMode": {"all": {}},
                                 "priorityClassName": "training-high"}


@pytest.mark.parametrize("scheduler, api", [("volcano", VOLCANO_API), ("coscheduling", COSCHEDULING_API)])
def test_pod_group_min_resources_are_what_min_member_workers_request(manifest, scheduler, api):
    manifest["spec"].update(nodes=4, slotsPerNode=8)
    manifest["spec"]["training"].pop("globalBatchSize")
    manifest["spec"]["resources"] = {"requests": {"cpu": "500m", "memory": "900Gi"}, "limits": {"memory": "1Ti"}}
    (pod_group,) = kinds_objects = build_gang_objects(job := job_of(manifest, scheduler=scheduler, minAvailable=3),
                                                      plan_gang(job, RenderContext(gang_apis=ALL_APIS)))
    assert kinds_objects[0]["apiVersion"] == api
    assert pod_group["spec"]["minMember"] == 3
    assert pod_group["spec"]["minResources"] == {"nvidia.com/gpu": "24", "memory": "2700Gi", "cpu": "1500m"}


@pytest.mark.parametrize("quantity, factor, expected", [
    ("8", 4, "32"), ("500m", 3, "1500m"), ("900Gi", 4, "3600Gi"), ("1.5", 2, "3"), ("0.25", 3, "0.75"), ("1e3", 2, None), ("100", 3, "300"),
])
def test_scale_quantity(quantity, factor, expected):
    assert scale_quantity(quantity, factor) == expected


@pytest.mark.parametrize("scheduler, own_scheduler, labels, annotations, spec", [
    ("kubernetes", None, {}, {}, {"schedulingGroup": {"podGroupName": "demo"}}),
    ("volcano", None, {}, {"scheduling.k8s.io/group-name": "demo"}, {"schedulerName": "volcano"}),
    ("volcano", "volcano-gpu", {}, {"scheduling.k8s.io/group-name": "demo"}, {"schedulerName": "volcano-gpu"}),
    ("coscheduling", None, {"scheduling.x-k8s.io/pod-group": "demo"}, {}, {"schedulerName": "scheduler-plugins-scheduler"}),
    ("none", None, {}, {}, {}),
])
def test_every_worker_pod_names_its_group(manifest, scheduler, own_scheduler, labels, annotations, spec):
    if own_scheduler:
        manifest["spec"]["podTemplate"] = {"schedulerName": own_scheduler}
    pods = [c for c in render(manifest, scheduler=scheduler) if c["kind"] == "Pod"]
    assert len(pods) == 2
    for pod in pods:
        assert labels.items() <= pod["metadata"]["labels"].items()
        assert annotations.items() <= (pod["metadata"].get("annotations") or {}).items()
        assert spec.items() <= pod["spec"].items()
        if scheduler != "kubernetes":
            assert "schedulingGroup" not in pod["spec"]
    fields = pod_gang_fields(job_of(manifest, scheduler=scheduler), plan_gang(job_of(manifest, scheduler=scheduler), RenderContext()), RenderContext())
    assert (fields.labels, fields.annotations, fields.spec) == (labels, annotations, spec)


# ------------------------------------------------------------------------------------------- decision
@pytest.mark.parametrize("gang, apis, status, reason, phase", [
    ({}, frozenset({KUBERNETES_API}), "True", "KubernetesWorkload", "Pending"),
    ({"scheduler": "volcano"}, ALL_APIS, "True", "VolcanoPodGroup", "Pending"),
    ({}, frozenset(), "False", "GangSchedulingUnavailable", "Pending"),
    ({"scheduler": "none"}, ALL_APIS, "False", "Disabled", "Pending"),
    ({"scheduler": "kubernetes"}, frozenset(), "False", "GangSchedulingUnavailable", "Failed"),
])
def test_gang_scheduled_condition_and_event(manifest, gang, apis, status, reason, phase):
    job = job_of(manifest, **gang)
    plan = plan_gang(job, RenderContext(gang_apis=apis))
    decision = decide(job, 1, [], {}, NOW, observed_since=NOW, gang_plan=plan)
    condition = find(decision.status["conditions"], GANG_SCHEDULED)
    assert (condition["status"], condition["reason"]) == (status, reason)
    warned = [e.reason for e in decision.events if e.reason == reason]
    assert warned == ([reason] if reason == "GangSchedulingUnavailable" else [])  # the condition alone says the rest
    assert decision.status["phase"] == phase
    assert decision.create_pods == (phase == "Pending")
    again = decide(job, 1, [], decision.status, NOW, observed_since=NOW, gang_plan=plan)  # said once
    assert reason not in [e.reason for e in again.events]


# ------------------------------------------------------------------------------------------ reconcile
def test_reconciler_creates_the_group_before_the_pods_and_keeps_it_across_restarts(manifest):
    manifest["spec"]["gang"] = {"scheduler": "kubernetes"}
    reconciler, _, _ = make_reconciler(manifest, RenderContext(gang_apis=ALL_APIS))
    kube = reconciler.kube
    reconcile(reconciler, manifest)
    created = [key for call, key in kube.calls if call == "create"]
    assert created[:4] == [("ConfigMap", "demo-config"), ("Service", "demo"), ("Workload", "demo"), ("PodGroup", "demo")]
    assert created[4:] == [("Pod", "demo-worker-0"), ("Pod", "demo-worker-1")]
    for pod in kube.pods():
        assert pod["spec"]["schedulingGroup"] == {"podGroupName": "demo"}
    # a worker fails: the gang restarts under the same group, which is not created again
    for rank in range(2):
        kube.set_pod(f"demo-worker-{rank}", **RUNNING)
    reconcile(reconciler, manifest)
    kube.set_pod("demo-worker-1", phase="Failed", containerStatuses=[{"name": "trainer", "state": {"terminated": {"exitCode": 1}}}])
    for _ in range(4):
        reconcile(reconciler, manifest)
        if manifest["status"].get("restartTime"):
            manifest["status"]["restartTime"] = "2000-01-01T00:00:00Z"  # no backoff wait in a unit test
    assert manifest["status"]["restarts"] == 1
    assert {p["metadata"]["labels"]["llmtraining.dev/restart"] for p in kube.pods()} == {"1"}
    assert [key for call, key in kube.calls if call == "create" and key[0] in ("Workload", "PodGroup")] == [("Workload", "demo"), ("PodGroup", "demo")]


def test_reconciler_fails_a_job_whose_gang_scheduler_is_not_served(manifest):
    manifest["spec"]["gang"] = {"scheduler": "volcano"}
    reconciler, events, _ = make_reconciler(manifest, RenderContext(gang_apis=frozenset({KUBERNETES_API})))
    reconcile(reconciler, manifest)
    assert reconciler.kube.calls[-1][0] == "status" and not any(call == "create" for call, _ in reconciler.kube.calls)
    assert manifest["status"]["phase"] == "Failed"
    assert manifest["status"]["failure"]["reason"] == "GangSchedulingUnavailable"
    assert any(e.type == "Warning" and e.reason == "GangSchedulingUnavailable" for e in events)


@pytest.mark.parametrize("flag, kinds", [((), []), (("--gang-scheduler", "kubernetes"), ["Workload", "PodGroup"]),
                                         (("--gang-scheduler", "volcano"), ["PodGroup"])])
def test_render_cli_prints_the_gang_objects_of_the_chosen_default(tmp_path, manifest, flag, kinds):
    """`llm-operator render` asks no cluster: auto means none there; --gang-scheduler says which to show."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = subprocess.run([sys.executable, "-m", "llm_operator.cli", "render", "-f", str(path), *flag], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in documents if d["kind"] in ("Workload", "PodGroup")] == kinds
