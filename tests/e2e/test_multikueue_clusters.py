"""MultiKueue for real (issue 20): two control planes on loopback, each with Kueue v0.17 (hack/kueue.sh) and the operator
(--kueue). The manager is the session's control plane; the worker is a second one (state dir <the manager's>-mk-worker,
2 kwok nodes of 8 GPUs, no audit log). The manager's Kueue reaches the worker's API server directly (both listen on
127.0.0.1), as a ServiceAccount of the worker bound to the chart's `multiKueue` rules and Kueue's rights on Workloads,
and dispatches the manager's jobs (spec.managedBy: kueue.x-k8s.io/multikueue) through its generic adapter for external
frameworks (multiKueue.externalFrameworks in hack/kueue.sh's configuration).

A worker cluster that is down is shown with the one worker: its API server stopped, a new job waits (Kueue makes the
manager's ClusterQueue inactive while no worker is reachable), the running one is not lost, and once the API server is
back the new job is dispatched. A second worker (a third control plane) would show Kueue choosing another cluster,
at the price of a whole control plane more on the test machine's 2 cores."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from llm_operator.multikueue import PREBUILT_WORKLOAD_LABEL
from operator_harness import (OPERATOR_NS, OPERATOR_SA, RULES_FILE, OperatorProcess, finish_pod, get_job, install_crd, job_manifest,
                              job_pods, service_account_kubeconfig, start_operator, wait_phase)
from test_kueue import KUEUE, QUEUE_LABEL, _script, condition, kueue, live_pods, workload  # noqa: F401  (kueue: the manager's Kueue)

MULTIKUEUE = "kueue.x-k8s.io/multikueue"
ORIGIN_LABEL = "kueue.x-k8s.io/multikueue-origin"
KUEUE_NS = "kueue-system"  # where Kueue's controller runs: the kubeconfig Secret lives there
WORKER = "llmto-e2e-worker"  # the MultiKueueCluster
WORKERS = "llmto-e2e-workers"  # the MultiKueueConfig
CHECK = "llmto-e2e-multikueue"  # the AdmissionCheck
FLAVOR = "llmto-e2e-mk"
CLUSTER_QUEUE = "llmto-e2e-mk"  # the same name in both clusters (only the LocalQueue's must match)
LOCAL_QUEUE = "mk-queue"
GPUS = 16  # the worker's 2 kwok nodes x 8; the manager's quota is the same: the workers' together
MULTIKUEUE_SA = "multikueue"  # the worker's identity for the manager's Kueue
# Kueue's rights in the worker beside the chart's: on Workloads those of Kueue's
# site/static/examples/multikueue/create-multikueue-kubeconfig.sh and update, which MultiKueue uses to take its finalizer
# off a remote Workload and to change a remote priority; and on batch Jobs, as that script gives them: the manager watches
# the kind of every MultiKueue adapter it has in every worker, and refuses the worker (ClientConnectionFailed) when it may
# not (hack/kueue.sh's Kueue has the batch/job integration, which Kueue enables when none is named)
WORKLOAD_RULES = [{"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["create", "delete", "get", "list", "watch", "update", "patch"]},
                  {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads/status"], "verbs": ["get", "patch", "update"]},
                  {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete", "get", "list", "watch"]},
                  {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get"]}]
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


@dataclass
class Worker:
    cp: object  # conftest.ControlPlane
    op: OperatorProcess


@pytest.fixture(scope="module")
def worker(control_planes, tmp_path_factory):
    """The worker control plane, its CRD, its Kueue, and the operator with --kueue under the chart's rules."""
    cp = control_planes.start("mk-worker", LLMTO_CP_NODES="2", LLMTO_CP_AUDIT="0")
    op = None
    try:
        install_crd(cp)
        up = _script("up", cp)
        if up.returncode != 0:
            pytest.fail(f"hack/kueue.sh up (worker) failed (rc={up.returncode}):\n{up.stdout[-3000:]}\n{up.stderr[-6000:]}", pytrace=False)
        op = start_operator(cp, tmp_path_factory.mktemp("worker-operator"), ("namespaced", "cluster", "kueueNamespaced", "kueueCluster"),
                            ("--kueue",))
        yield Worker(cp, op)
    finally:
        if op is not None:
            op.stop()
        control_planes.stop(cp)  # Kueue with it


def cluster_active(cp) -> dict:
    return condition(cp.get_json("multikueuecluster", WORKER), "Active")


def wait_connected(manager, timeout: float) -> None:
    try:
        manager.wait_for(lambda: cluster_active(manager).get("status") == "True", timeout=timeout, what="the manager's Kueue connected to the worker")
    except BaseException:
        print(f"MultiKueueCluster {WORKER}: {cluster_active(manager)}", file=sys.stderr)
        raise


@pytest.fixture(scope="module")
def multikueue(control_plane, kueue, worker, tmp_path_factory):  # noqa: F811  (kueue: the fixture imported above)
    """The worker's queue and the identity the manager's Kueue uses there; in the manager the kubeconfig Secret,
    MultiKueueCluster, MultiKueueConfig, AdmissionCheck and a ClusterQueue that dispatches (docs/scheduling.md)."""
    manager, remote = control_plane, worker.cp
    rules = yaml.safe_load(RULES_FILE.read_text())["multiKueue"] + WORKLOAD_RULES
    remote.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": MULTIKUEUE_SA, "namespace": KUEUE_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "llmto-e2e-multikueue"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "llmto-e2e-multikueue"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "llmto-e2e-multikueue"},
         "subjects": [{"kind": "ServiceAccount", "name": MULTIKUEUE_SA, "namespace": KUEUE_NS}]},
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}},
        cluster_queue(),
    ])
    kubeconfig = Path(service_account_kubeconfig(remote, tmp_path_factory.mktemp("multikueue") / "worker.kubeconfig", KUEUE_NS, MULTIKUEUE_SA))
    manager.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{WORKER}-kubeconfig", "namespace": KUEUE_NS},
         "stringData": {"kubeconfig": kubeconfig.read_text()}},
        {"apiVersion": KUEUE, "kind": "MultiKueueCluster", "metadata": {"name": WORKER},
         "spec": {"clusterSource": {"kubeConfig": {"locationType": "Secret", "location": f"{WORKER}-kubeconfig"}}}},
        {"apiVersion": KUEUE, "kind": "MultiKueueConfig", "metadata": {"name": WORKERS}, "spec": {"clusters": [WORKER]}},
        {"apiVersion": KUEUE, "kind": "AdmissionCheck", "metadata": {"name": CHECK},
         "spec": {"controllerName": MULTIKUEUE, "parameters": {"apiGroup": "kueue.x-k8s.io", "kind": "MultiKueueConfig", "name": WORKERS}}},
        {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}},
        cluster_queue(admission_check=CHECK),
    ])
    wait_connected(manager, timeout=60)
    for cp in (manager, remote):
        cp.wait_for(lambda cp=cp: condition(cp.get_json("clusterqueue", CLUSTER_QUEUE), "Active").get("status") == "True", timeout=60,
                    what=f"ClusterQueue {CLUSTER_QUEUE} active")
    try:
        yield
    finally:
        manager.kubectl("delete", "clusterqueue", CLUSTER_QUEUE, "--wait=false", "--ignore-not-found", check=False)
        manager.kubectl("delete", "admissioncheck", CHECK, "--wait=false", "--ignore-not-found", check=False)
        manager.kubectl("delete", "multikueueconfig", WORKERS, "--ignore-not-found", check=False)
        manager.kubectl("delete", "multikueuecluster", WORKER, "--ignore-not-found", check=False)
        manager.kubectl("-n", KUEUE_NS, "delete", "secret", f"{WORKER}-kubeconfig", "--ignore-not-found", check=False)


def cluster_queue(admission_check: str | None = None) -> dict:
    spec: dict = {"namespaceSelector": {},
                  "resourceGroups": [{"coveredResources": ["nvidia.com/gpu"],
                                      "flavors": [{"name": FLAVOR, "resources": [{"name": "nvidia.com/gpu", "nominalQuota": GPUS}]}]}]}
    if admission_check:
        spec["admissionChecksStrategy"] = {"admissionChecks": [{"name": admission_check}]}
    return {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE}, "spec": spec}


@pytest.fixture
def queues(control_plane, multikueue, worker, namespace):
    """The test's namespace, with a LocalQueue of the same name, in both clusters."""
    remote = worker.cp
    remote.kubectl("create", "namespace", namespace)
    remote.wait_for(lambda: remote.kubectl("-n", namespace, "get", "serviceaccount", "default", check=False).returncode == 0,
                    timeout=30, what=f"default ServiceAccount in {namespace} (worker)")
    for cp in (control_plane, remote):
        cp.apply({"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": LOCAL_QUEUE}, "spec": {"clusterQueue": CLUSTER_QUEUE}}, namespace)
    yield namespace
    remote.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def dispatched_job(name: str) -> dict:
    job = job_manifest(name, nodes=2, slots=4)  # 8 GPUs: two such jobs fill the worker
    job["metadata"]["labels"] = {QUEUE_LABEL: LOCAL_QUEUE}
    job["spec"]["managedBy"] = MULTIKUEUE
    return job


def find_job(cp, namespace, name) -> dict | None:
    out = cp.kubectl("get", "ltj", name, "-n", namespace, "--ignore-not-found", "-o", "json").stdout
    return json.loads(out) if out.strip() else None


def workloads(cp, namespace) -> list[dict]:
    return cp.get_json("workloads.kueue.x-k8s.io", "-n", namespace)["items"]


def running_on_worker(worker, namespace, name) -> list[dict]:
    """The job's copy Running on the worker with its whole gang bound to the worker's kwok nodes: its pods."""
    wait_phase(worker.cp, worker.op, namespace, name, "Running", timeout=120)
    pods = live_pods(job_pods(worker.cp, namespace, name))
    assert len(pods) == 2 and all(p["spec"]["nodeName"].startswith("kwok-gpu-") for p in pods), [p["spec"].get("nodeName") for p in pods]
    return pods


def status_copied(manager, worker, namespace, name, **expected) -> dict:
    """The manager's job once its status is the worker's copy's, whole, and has the expected fields."""
    def same():
        ours, theirs = get_job(manager, namespace, name).get("status"), (find_job(worker.cp, namespace, name) or {}).get("status")
        return ours if ours and ours == theirs and all(ours.get(k) == v for k, v in expected.items()) else None
    return manager.wait_for(same, timeout=60, what=f"the manager's {name} showing the worker's status ({expected})")


def finish_on_worker(worker, namespace, name) -> None:
    for pod in job_pods(worker.cp, namespace, name):
        finish_pod(worker.cp, namespace, pod["metadata"]["name"], 0)


def audit_writes(cp, namespace: str) -> list[dict]:
    """The writes to the namespace's LLMTrainingJobs the manager's API server logged (one per request)."""
    log = Path(cp.state_dir) / "logs" / "audit.log"
    assert log.exists(), f"{log} missing: start the control plane with LLMTO_CP_AUDIT=1"
    found, seen = [], set()
    for line in log.read_text(errors="replace").splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (ref.get("resource") == "llmtrainingjobs" and ref.get("namespace") == namespace and event.get("verb") in WRITE_VERBS
                and event["auditID"] not in seen):
            seen.add(event["auditID"])
            found.append(event)
    return found


def test_a_job_applied_to_the_manager_runs_on_the_worker_and_reaches_succeeded_there_and_here(control_plane, operator, worker, queues):
    manager, namespace = control_plane, queues
    manager.apply(dispatched_job("dispatched"), namespace)
    ours = get_job(manager, namespace, "dispatched")
    copy = worker.cp.wait_for(lambda: find_job(worker.cp, namespace, "dispatched"), timeout=90, what="MultiKueue's copy on the worker")
    [dispatched] = workloads(manager, namespace)  # the manager's operator made it; MultiKueue copied it to the worker
    assert [(r["uid"], r.get("controller")) for r in dispatched["metadata"]["ownerReferences"]] == [(ours["metadata"]["uid"], True)]
    assert "managedBy" not in copy["spec"]
    assert copy["metadata"]["labels"][PREBUILT_WORKLOAD_LABEL] == dispatched["metadata"]["name"]
    assert ORIGIN_LABEL in copy["metadata"]["labels"]

    running_on_worker(worker, namespace, "dispatched")
    [adopted] = workloads(worker.cp, namespace)  # MultiKueue's copy of the Workload, adopted: the only one there
    assert adopted["metadata"]["name"] == dispatched["metadata"]["name"]
    assert [(r["uid"], r.get("controller")) for r in adopted["metadata"]["ownerReferences"]] == [(copy["metadata"]["uid"], True)]
    assert condition(adopted, "Admitted")["status"] == "True"
    status_copied(manager, worker, namespace, "dispatched", phase="Running", readyNodes=2)
    dispatched = workload(manager, namespace, "dispatched")
    assert dispatched["status"]["clusterName"] == WORKER and condition(dispatched, "Admitted")["status"] == "True"
    assert job_pods(manager, namespace, "dispatched") == []  # no gang, nor anything else of the job, on the manager
    assert manager.get_json("configmaps,services,secrets", "-n", namespace, "-l", "llmtraining.dev/job-name=dispatched")["items"] == []

    finish_on_worker(worker, namespace, "dispatched")
    done = wait_phase(manager, operator, namespace, "dispatched", "Succeeded", timeout=90)
    assert done["status"]["restarts"] == 0
    manager.wait_for(lambda: condition(workload(manager, namespace, "dispatched"), "Finished").get("status") == "True", timeout=30,
                     what="the manager's Workload Finished (its quota released)")
    # the job is done: MultiKueue removes its copy and the copy's Workload from the worker; the manager keeps the status
    worker.cp.wait_for(lambda: find_job(worker.cp, namespace, "dispatched") is None and workloads(worker.cp, namespace) == [], timeout=60,
                       what="the worker's copies removed")
    assert get_job(manager, namespace, "dispatched")["status"]["phase"] == "Succeeded"

    time.sleep(1)  # the audit log is written as requests complete
    writes = audit_writes(manager, namespace)
    by_operator = [e for e in writes if e["user"]["username"] == OPERATOR_USER]
    assert by_operator == [], [(e["verb"], e["objectRef"]) for e in by_operator]  # never the status of a job MultiKueue manages
    status_writes = [e for e in writes if e["objectRef"].get("subresource") == "status"]
    assert status_writes and all(e["userAgent"].startswith("kueue") for e in status_writes), \
        [(e["user"]["username"], e["userAgent"]) for e in status_writes]  # Kueue's copies: the check is not blind


def test_a_job_whose_worker_is_down_waits_and_runs_once_it_is_back_and_nothing_is_lost(control_plane, operator, worker, queues):
    manager, namespace = control_plane, queues
    manager.apply(dispatched_job("before"), namespace)
    gang = {p["metadata"]["uid"] for p in running_on_worker(worker, namespace, "before")}
    status_copied(manager, worker, namespace, "before", phase="Running", readyNodes=2)

    worker.cp.stop("kube-apiserver")
    try:
        inactive = manager.wait_for(lambda: (c := cluster_active(manager)).get("status") == "False" and c, timeout=60,
                                    what="the manager's Kueue losing the worker")
        print(f"worker down: {inactive.get('reason')}: {inactive.get('message')}")
        manager.wait_for(lambda: condition(manager.get_json("clusterqueue", CLUSTER_QUEUE), "Active").get("status") == "False", timeout=60,
                         what=f"ClusterQueue {CLUSTER_QUEUE} inactive without a worker")
        manager.apply(dispatched_job("during"), namespace)
        waiting = manager.wait_for(lambda: condition(workload(manager, namespace, "during"), "QuotaReserved").get("message"), timeout=60,
                                   what="the new job's Workload told why it waits")
        assert f"ClusterQueue {CLUSTER_QUEUE} is inactive" in waiting, waiting
        assert "status" not in get_job(manager, namespace, "during")  # nothing to copy yet; why it waits is on its Workload
        assert get_job(manager, namespace, "before")["status"]["phase"] == "Running"  # the running job is not given up
    finally:  # at once: no node Lease is renewed while the API server is down (a long outage would make the nodes NotReady)
        worker.cp.restart("kube-apiserver")

    wait_connected(manager, timeout=180)
    running_on_worker(worker, namespace, "during")
    status_copied(manager, worker, namespace, "during", phase="Running", readyNodes=2)
    assert {p["metadata"]["uid"] for p in live_pods(job_pods(worker.cp, namespace, "before"))} == gang  # the same gang ran on
    assert get_job(worker.cp, namespace, "before")["status"]["restarts"] == 0

    for name in ("before", "during"):
        finish_on_worker(worker, namespace, name)
    for name in ("before", "during"):
        assert wait_phase(manager, operator, namespace, name, "Succeeded", timeout=90)["status"]["restarts"] == 0
    assert sorted(w["metadata"]["labels"]["llmtraining.dev/job-name"] for w in workloads(manager, namespace)) == ["before", "during"]


def test_deleting_the_job_on_the_manager_deletes_it_on_the_worker(control_plane, operator, worker, queues):
    manager, namespace = control_plane, queues
    manager.apply(dispatched_job("doomed"), namespace)
    running_on_worker(worker, namespace, "doomed")
    manager.kubectl("delete", "ltj", "doomed", "-n", namespace, "--wait=true")
    worker.cp.wait_for(lambda: find_job(worker.cp, namespace, "doomed") is None, timeout=60, what="the worker's copy deleted")
    worker.cp.wait_for(lambda: workloads(worker.cp, namespace) == [] and job_pods(worker.cp, namespace, "doomed") == [], timeout=60,
                       what="the worker's Workload and gang gone")
    manager.wait_for(lambda: workloads(manager, namespace) == [], timeout=60, what="the manager's Workload gone")
