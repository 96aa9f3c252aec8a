"""Gang scheduling on the real control plane: kube-scheduler's own (feature gate GenericWorkload, turned on by
hack/controlplane.sh) binds a gang all or nothing, where the same job without a gang is bound in part; and the
PodGroups rendered for Volcano and the coscheduling plugin are accepted by those projects' published CRD schemas
(tests/e2e/crds/, their sources noted in each file), in a server-side dry run and when the operator creates them.

The kwok nodes have 8 fake GPUs each (3 nodes): a job of 4 × 8 GPUs cannot fit whole.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from kstatus_tool import kstatus
from operator_harness import OPERATOR_NS, OPERATOR_SA, RULES_FILE, get_job, job_manifest, job_pods, wait_phase

from llm_operator.api import parse_job
from llm_operator.render import RenderContext
from llm_operator.render.gang import GANG_APIS, build_gang_objects, plan_gang

CRDS = Path(__file__).resolve().parent / "crds"
VOLCANO_CRD, COSCHEDULING_CRD = CRDS / "volcano-v1.13.0-podgroups.yaml", CRDS / "scheduler-plugins-v0.34.7-podgroups.yaml"
SETTLE_SECONDS = 5  # after the scheduler has tried the gang: long enough for a partial binding to show


def gang_condition(job: dict) -> dict:
    return next(c for c in job["status"]["conditions"] if c["type"] == "GangScheduled")


def bound(pods: list[dict]) -> list[str]:
    return sorted(p["metadata"]["name"] for p in pods if p["spec"].get("nodeName"))


def unschedulable(pods: list[dict]) -> list[str]:
    return [p["metadata"]["name"] for p in pods
            if any(c["type"] == "PodScheduled" and c["status"] == "False" for c in p.get("status", {}).get("conditions", []))]


def too_big(name: str, **spec) -> dict:
    """4 workers × 8 GPUs on 3 nodes of 8 GPUs: one worker can never fit."""
    return job_manifest(name, nodes=4, slots=8, podTemplate={"nodeSelector": {"type": "kwok"}}, **spec)


def test_kubernetes_gang_binds_all_or_nothing_where_no_gang_binds_part(control_plane, operator, namespace):
    cp = control_plane
    # with the gang (the operator's default: the API server serves the Workload API)
    cp.apply(too_big("gang"), namespace)
    pods = cp.wait_for(lambda: (p := job_pods(cp, namespace, "gang")) and len(p) == 4 and unschedulable(p) and p,
                       timeout=60, what="the gang's 4 pods created and tried by the scheduler")
    time.sleep(SETTLE_SECONDS)
    pods = job_pods(cp, namespace, "gang")
    assert bound(pods) == [], "a gang that does not fit must not be bound in part"
    assert all(p["spec"]["schedulingGroup"] == {"podGroupName": "gang"} for p in pods)
    job = get_job(cp, namespace, "gang")
    assert (gang_condition(job)["status"], gang_condition(job)["reason"]) == ("True", "KubernetesWorkload")
    assert job["status"]["phase"] == "Created" and kstatus(job) == "InProgress"  # an unschedulable gang is not healthy
    pod_group = cp.get_json("podgroups.scheduling.k8s.io", "gang", "-n", namespace)
    workload = cp.get_json("workloads.scheduling.k8s.io", "gang", "-n", namespace)
    assert pod_group["spec"]["schedulingPolicy"] == {"gang": {"minCount": 4}}
    assert workload["spec"]["podGroupTemplates"][0]["schedulingPolicy"] == {"gang": {"minCount": 4}}
    for obj in (pod_group, workload):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    print(f"\ngang (scheduler kubernetes): bound {bound(pods)} of {len(pods)}; unschedulable {unschedulable(pods)}")
    cp.kubectl("-n", namespace, "delete", "ltj", "gang", "--wait=true", timeout=120)
    cp.wait_for(lambda: not job_pods(cp, namespace, "gang"), timeout=60, what="the gang's pods gone")

    # the same job without a gang: the scheduler binds what fits
    cp.apply(too_big("loose", gang={"scheduler": "none"}), namespace)
    pods = cp.wait_for(lambda: (p := job_pods(cp, namespace, "loose")) and len(bound(p)) == 3 and unschedulable(p) and p,
                       timeout=60, what="3 of the 4 ungrouped pods bound")
    time.sleep(SETTLE_SECONDS)
    pods = job_pods(cp, namespace, "loose")
    assert len(bound(pods)) == 3 and len(pods) == 4
    assert not any("schedulingGroup" in p["spec"] for p in pods)
    job = get_job(cp, namespace, "loose")
    assert (gang_condition(job)["status"], gang_condition(job)["reason"]) == ("False", "Disabled")
    assert cp.kubectl("-n", namespace, "get", "podgroups.scheduling.k8s.io", "loose", check=False).returncode != 0
    print(f"no gang (scheduler none): bound {bound(pods)} of {len(pods)}: 24 GPUs held by a job that cannot start")


def test_a_gang_that_fits_runs_and_restarts_under_the_same_group(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("fits", nodes=3, slots=8, podTemplate={"nodeSelector": {"type": "kwok"}}), namespace)
    job = wait_phase(cp, operator, namespace, "fits", "Running")
    assert gang_condition(job)["reason"] == "KubernetesWorkload"
    first = cp.get_json("podgroups.scheduling.k8s.io", "fits", "-n", namespace)["metadata"]["uid"]
    cp.kubectl("-n", namespace, "annotate", "pod", "fits-worker-1", f"{cp.EXIT_CODE_ANNOTATION}=1")
    cp.wait_for(lambda: get_job(cp, namespace, "fits")["status"].get("restarts") == 1, timeout=60, what="a gang restart")
    job = wait_phase(cp, operator, namespace, "fits", "Running", timeout=120)
    assert len(bound(job_pods(cp, namespace, "fits"))) == 3
    assert cp.get_json("podgroups.scheduling.k8s.io", "fits", "-n", namespace)["metadata"]["uid"] == first


# ------------------------------------------------------------------------------- Volcano, coscheduling
@pytest.fixture(scope="module")
def gang_crds(control_plane):
    for crd in (VOLCANO_CRD, COSCHEDULING_CRD):
        control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    for name in ("podgroups.scheduling.volcano.sh", "podgroups.scheduling.x-k8s.io"):
        control_plane.wait_for(lambda name=name: control_plane.kubectl(
            "get", f"crd/{name}", "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}").stdout == "True",
            timeout=60, what=f"CRD {name} established")
    return True


def dry_run(cp, namespace: str, obj: dict):
    return cp.kubectl("-n", namespace, "create", "--dry-run=server", "--validate=strict", "-o", "json", "-f", "-",
                      input=json.dumps(obj), check=False)


@pytest.mark.parametrize("scheduler", ["volcano", "coscheduling", "kubernetes"])
def test_rendered_pod_groups_pass_the_published_schemas(control_plane, gang_crds, namespace, scheduler):
    cp = control_plane
    cp.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "e2e-training-high"}, "value": 1000})
    manifest = job_manifest("dry", nodes=4, slots=8, resources={"requests": {"cpu": "16", "memory": "200Gi"}},
                            podTemplate={"priorityClassName": "e2e-training-high"}, gang={"scheduler": scheduler, "minAvailable": 3})
    manifest["metadata"].update(namespace=namespace, uid="0b5c1e5e-1111-2222-3333-444455556666")
    job = parse_job(manifest)
    objects = build_gang_objects(job, plan_gang(job, RenderContext(gang_apis=frozenset(GANG_APIS))))
    assert objects
    for obj in objects:
        proc = dry_run(cp, namespace, obj)
        assert proc.returncode == 0, proc.stderr
        stored = json.loads(proc.stdout)
        spec = stored["spec"]
        assert spec.get("minMember", (spec.get("schedulingPolicy") or spec.get("podGroupTemplates", [{}])[0].get("schedulingPolicy", {})).get("gang", {}).get("minCount")) == 3
        if scheduler != "kubernetes":
            assert spec["minResources"] == {"cpu": "48", "memory": "600Gi", "nvidia.com/gpu": "24"}
    # the schema is really checked: the same object with a field it does not define, or a wrong type, is refused
    broken = json.loads(json.dumps(objects[-1]))
    broken["spec"]["minMembers"] = 3
    assert dry_run(cp, namespace, broken).returncode != 0
    if scheduler != "kubernetes":
        broken = json.loads(json.dumps(objects[-1]))
        broken["spec"]["minMember"] = "three"
        assert dry_run(cp, namespace, broken).returncode != 0


@pytest.fixture(scope="module")
def operator_with_gang_crds(control_plane, operator, gang_crds):
    """The session's operator, granted the Volcano and coscheduling rules and restarted, so that its discovery at
    start-up finds their PodGroup APIs."""
    rules = yaml.safe_load(RULES_FILE.read_text())
    control_plane.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "llm-training-operator-e2e-gangs"},
         "rules": rules["volcano"] + rules["coscheduling"]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "llm-training-operator-e2e-gangs"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "llm-training-operator-e2e-gangs"},
         "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]},
    ])
    operator.stop()
    operator.start()
    return operator


@pytest.mark.parametrize("scheduler, api, reason, scheduler_name", [
    ("volcano", "podgroups.scheduling.volcano.sh", "VolcanoPodGroup", "volcano"),
    ("coscheduling", "podgroups.scheduling.x-k8s.io", "CoschedulingPodGroup", "scheduler-plugins-scheduler"),
])
def test_operator_creates_volcano_and_coscheduling_pod_groups(control_plane, operator_with_gang_crds, namespace, scheduler, api, reason,
                                                              scheduler_name):
    cp = control_plane
    cp.apply(job_manifest("pg", nodes=2, slots=8, gang={"scheduler": scheduler}), namespace)
    pods = cp.wait_for(lambda: (p := job_pods(cp, namespace, "pg")) and len(p) == 2 and p, timeout=60, what="the job's pods")
    pod_group = cp.get_json(api, "pg", "-n", namespace)
    assert pod_group["spec"]["minMember"] == 2 and pod_group["spec"]["minResources"]["nvidia.com/gpu"] == "16"
    job = get_job(cp, namespace, "pg")
    assert pod_group["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert (gang_condition(job)["status"], gang_condition(job)["reason"]) == ("True", reason)
    for pod in pods:  # no Volcano or scheduler-plugins runs here: the pods wait for a scheduler of that name
        assert pod["spec"]["schedulerName"] == scheduler_name and not pod["spec"].get("nodeName")
        named = {**pod["metadata"].get("labels", {}), **pod["metadata"].get("annotations", {})}
        assert named.get({"volcano": "scheduling.k8s.io/group-name", "coscheduling": "scheduling.x-k8s.io/pod-group"}[scheduler]) == "pg"


def test_a_worker_preempted_by_the_scheduler_restarts_the_gang_uncounted(control_plane, operator, namespace):
    """A higher-priority pod takes a worker's GPUs: the scheduler marks the victim DisruptionTarget and deletes it; the
    gang restarts without counting (backoffLimit 0 would fail it otherwise), and the new gang, which no longer fits,
    waits whole."""
    cp = control_plane
    cp.apply([
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "e2e-training-low"}, "value": 100},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "e2e-urgent"}, "value": 100000},
    ])
    cp.apply(job_manifest("victim", nodes=3, slots=8, runPolicy={"backoffLimit": 0},
                          podTemplate={"nodeSelector": {"type": "kwok"}, "priorityClassName": "e2e-training-low"}), namespace)
    wait_phase(cp, operator, namespace, "victim", "Running")
    cp.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "urgent"},
              "spec": {"priorityClassName": "e2e-urgent", "nodeSelector": {"type": "kwok"}, "tolerations": [cp.GPU_TOLERATION],
                       "restartPolicy": "Never", "containers": [{"name": "c", "image": "urgent:1",
                                                                 "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}}, namespace)
    job = cp.wait_for(lambda: (j := get_job(cp, namespace, "victim"))["status"].get("restarts") == 1 and j, timeout=90,
                      what="the gang restarted after the preemption")
    assert job["status"]["countedRestarts"] == 0 and job["status"]["phase"] != "Failed"
    assert job["status"]["failure"]["reason"] in ("Preempted", "PodDeleted")  # whether the operator saw the condition or only the deletion
    cp.wait_for(lambda: cp.get_json("pod", "urgent", "-n", namespace)["spec"].get("nodeName"), timeout=60, what="the urgent pod bound")
    pods = cp.wait_for(lambda: (p := job_pods(cp, namespace, "victim")) and len(p) == 3 and unschedulable(p) and p,
                       timeout=60, what="the new gang created and tried")
    assert all(p["metadata"]["labels"]["llmtraining.dev/restart"] == "1" for p in pods)
    time.sleep(SETTLE_SECONDS)
    assert bound(job_pods(cp, namespace, "victim")) == [], "16 GPUs are left for a gang of 24: none may be bound"
    print(f"\npreempted: failure {job['status']['failure']['reason']}, restarts 1, counted 0; the new gang waits whole")
