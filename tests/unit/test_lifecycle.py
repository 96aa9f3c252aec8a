"""Job status from pods: phases, conditions, failure, progress; and a reconcile against a fake API."""

import pytest

from llm_operator.api import parse_job
from llm_operator.kube import ForeignChild
from llm_operator.reconcile import Reconciler
from llm_operator.render import RenderContext
from llm_operator.status import observe

T0, T1, T2 = "2026-11-27T10:00:00Z", "2026-11-27T10:05:00Z", "2026-11-27T11:00:00Z"


def pod(rank, phase="Pending", ready=False, exit_code=None, reason=None, job="demo", finished_at=None, owner_uid="0b5c1e5e-1111-2222-3333-444455556666"):
    status = {"phase": phase}
    if ready:
        status["conditions"] = [{"type": "Ready", "status": "True"}]
    if exit_code is not None:
        terminated = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error")}
        if finished_at:
            terminated["finishedAt"] = finished_at
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    return {
        "metadata": {"name": f"{job}-worker-{rank}", "labels": {"llmtraining.dev/node-rank": str(rank)},
                     "ownerReferences": [{"uid": owner_uid}]},
        "spec": {"nodeName": f"gpu-node-{rank}"},
        "status": status,
    }


@pytest.fixture
def job(manifest):
    return parse_job(manifest)


def test_no_pods_is_pending(job):
    status = observe(job, 1, [], None, T0).status
    assert status["phase"] == "Pending"
    assert status["nodesReady"] == "0/2"
    assert "startTime" not in status


def test_created_then_running(job):
    created = observe(job, 1, [pod(0), pod(1)], None, T0)
    assert created.status["phase"] == "Created"
    assert created.status["startTime"] == T0
    assert [e.reason for e in created.events] == ["PodsCreated"]

    running = observe(job, 1, [pod(0, "Running", True), pod(1, "Running", True)], created.status, T1)
    assert running.status["phase"] == "Running"
    assert running.status["readyNodes"] == 2 and running.status["nodesReady"] == "2/2"
    assert running.status["startTime"] == T0
    assert [e.reason for e in running.events] == ["AllWorkersRunning"]
    conditions = {c["type"]: c for c in running.status["conditions"]}
    assert conditions["Created"]["lastTransitionTime"] == T0  # unchanged condition keeps its time
    assert conditions["Running"]["status"] == "True" and conditions["Running"]["lastTransitionTime"] == T1


def test_unchanged_world_gives_identical_status(job):
    first = observe(job, 1, [pod(0, "Running", True), pod(1, "Running", True)], None, T0)
    again = observe(job, 1, [pod(0, "Running", True), pod(1, "Running", True)], first.status, T1)
    assert again.status == first.status
    assert again.events == []


def test_all_workers_succeed(job):
    running = observe(job, 1, [pod(0, "Running", True), pod(1, "Running", True)], None, T0).status
    done = observe(job, 1, [pod(0, "Succeeded", exit_code=0), pod(1, "Succeeded", exit_code=0)], running, T2)
    assert done.status["phase"] == "Succeeded"
    assert done.status["completionTime"] == T2
    assert done.finished
    conditions = {c["type"]: c["status"] for c in done.status["conditions"]}
    assert conditions == {"Created": "True", "Running": "False", "Succeeded": "True"}


def test_one_worker_succeeded_is_not_done(job):
    status = observe(job, 1, [pod(0, "Succeeded", exit_code=0), pod(1, "Running", True)], None, T0).status
    assert status["phase"] == "Created"


def test_failed_worker_fails_the_job_with_details(job):
    running = observe(job, 1, [pod(0, "Running", True), pod(1, "Running", True)], None, T0).status
    failed = observe(job, 1, [pod(0, "Running", True), pod(1, "Failed", exit_code=137, reason="OOMKilled")], running, T1)
    assert failed.status["phase"] == "Failed"
    assert failed.status["failure"] == {"rank": 1, "pod": "demo-worker-1", "node": "gpu-node-1", "exitCode": 137, "reason": "OOMKilled"}
    (warning,) = [e for e in failed.events if e.type == "Warning"]
    assert warning.message == "worker demo-worker-1 (node rank 1) failed with exit code 137: OOMKilled"
    # terminal: later pod changes do not move the phase
    later = observe(job, 1, [pod(0, "Succeeded", exit_code=0), pod(1, "Failed", exit_code=137)], failed.status, T2)
    assert later.status["phase"] == "Failed" and later.status["completionTime"] == T1


def test_failure_names_the_first_worker_to_fail(job):
    pods = [pod(0, "Failed", exit_code=1, finished_at="2026-11-27T10:00:09Z"),  # NCCL error: a victim
            pod(1, "Failed", exit_code=137, reason="OOMKilled", finished_at="2026-11-27T10:00:02Z")]
    assert observe(job, 1, pods, None, T0).status["failure"]["pod"] == "demo-worker-1"


def test_succeeded_job_shows_every_step_done(job):
    reported = {"step": 9, "loss": 1.0}
    running = observe(job, 1, [pod(0, "Running", True), pod(1, "Running", True)], None, T0, reported).status
    done = observe(job, 1, [pod(0, "Succeeded", exit_code=0), pod(1, "Succeeded", exit_code=0)], running, T1).status
    assert done["progress"]["step"] == 10 and done["progress"]["stepOfTotal"] == "10/10" and done["progress"]["loss"] == 1.0


def test_pod_deleted_while_running_fails_the_job(job):
    running = observe(job, 1, [pod(0, "Running", True), pod(1, "Running", True)], None, T0).status
    failed = observe(job, 1, [pod(0, "Running", True)], running, T1).status
    assert failed["phase"] == "Failed"
    assert failed["failure"]["pod"] == "demo-worker-1" and failed["failure"]["reason"] == "PodDeleted"


def test_ssh_mode_succeeds_when_the_launcher_does(manifest):
    manifest["spec"]["launcher"] = {"mode": "ssh"}
    job = parse_job(manifest)
    status = observe(job, 1, [pod(0, "Succeeded", exit_code=0), pod(1, "Running", True)], None, T0).status
    assert status["phase"] == "Succeeded"


def test_progress_is_what_rank_zero_reported(job):
    reported = {"step": 7, "loss": 2.5, "tokensPerSecond": 1234.5, "mfu": 0.41, "lastCheckpointStep": 5}
    status = observe(job, 1, [pod(0, "Running", True), pod(1, "Running", True)], None, T0, reported).status
    assert status["progress"] == {"step": 7, "totalSteps": 10, "stepOfTotal": "7/10", "loss": 2.5, "tokensPerSecond": 1234.5, "mfu": 0.41}
    assert status["lastCheckpoint"] == {"step": 5, "tag": "global_step5", "path": "/checkpoints/checkpoints/global_step5"}
    # nothing new reported (e.g. after an operator restart): the last known progress stays
    again = observe(job, 1, [pod(0, "Running", True), pod(1, "Running", True)], status, T1).status
    assert again["progress"] == status["progress"] and again["lastCheckpoint"] == status["lastCheckpoint"]


def test_no_progress_yet(job):
    assert observe(job, 1, [], None, T0).status["progress"] == {"step": 0, "totalSteps": 10, "stepOfTotal": "0/10"}


class FakeKube:
    """Records what the reconciler does; objects live in dicts like on a real API server."""

    def __init__(self, body):
        self.body = body
        self.objects = {}
        self.status_patches = []
        self.deleted = []

    def create_if_absent(self, obj):
        key = (obj["kind"], obj["metadata"]["name"])
        if key in self.objects:
            if self.objects[key]["metadata"]["ownerReferences"][0]["uid"] != obj["metadata"]["ownerReferences"][0]["uid"]:
                raise ForeignChild(key)
            return False
        self.objects[key] = obj
        return True

    def list_job_pods(self, namespace, job_name):
        return [o for (kind, _), o in self.objects.items() if kind == "Pod" and o["metadata"]["name"] not in self.deleted]

    def delete_pod(self, namespace, name):
        self.deleted.append(name)

    def patch_job_status(self, namespace, name, status):
        self.status_patches.append(status)
        self.body["status"] = status


def make_reconciler(body):
    events = []
    keys_made = []

    def keys():
        keys_made.append(1)
        return {"id_ed25519": f"key-{len(keys_made)}"}

    reconciler = Reconciler(kube=FakeKube(body), ctx=RenderContext(), emit=lambda b, e: events.append(e), generate_ssh_keys=keys)
    return reconciler, events, keys_made


def test_reconcile_is_idempotent(manifest):
    manifest["spec"]["launcher"] = {"mode": "ssh"}
    reconciler, events, keys_made = make_reconciler(manifest)
    reconciler.reconcile(manifest)
    created = dict(reconciler.kube.objects)
    assert sorted(created) == [("ConfigMap", "demo-config"), ("Pod", "demo-worker-0"), ("Pod", "demo-worker-1"), ("Secret", "demo-ssh"), ("Service", "demo")]
    patches = len(reconciler.kube.status_patches)
    reconciler.reconcile(manifest)  # nothing changed: no new objects, no status write, no new keys
    assert reconciler.kube.objects == created
    assert len(reconciler.kube.status_patches) == patches
    assert keys_made == [1]
    del reconciler.kube.objects[("Pod", "demo-worker-1")]  # e.g. the operator died before creating it
    reconciler.reconcile(manifest)
    assert ("Pod", "demo-worker-1") in reconciler.kube.objects
    assert reconciler.kube.objects[("Secret", "demo-ssh")]["stringData"] == {"id_ed25519": "key-1"}  # the first keys stay


def test_reconcile_never_adopts_a_deleted_namesakes_children(manifest):
    reconciler, _, _ = make_reconciler(manifest)
    old = dict(manifest, metadata={**manifest["metadata"], "uid": "old-uid"})
    reconciler.reconcile(old)
    assert reconciler.kube.list_job_pods("team-a", "demo")  # the old job's pods, awaiting garbage collection
    manifest.pop("status", None)
    with pytest.raises(ForeignChild):
        reconciler.reconcile(manifest)
    assert "status" not in manifest  # the old pods' state was not taken for the new job's


def test_reconcile_cleans_running_pods_after_failure(manifest):
    reconciler, events, _ = make_reconciler(manifest)
    reconciler.reconcile(manifest)
    objects = reconciler.kube.objects
    objects[("Pod", "demo-worker-0")]["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    objects[("Pod", "demo-worker-1")]["status"] = pod(1, "Failed", exit_code=1)["status"]
    reconciler.reconcile(manifest)
    assert manifest["status"]["phase"] == "Failed"
    assert reconciler.kube.deleted == ["demo-worker-0"]  # cleanPodPolicy Running: only the still-running one
    assert any(e.reason == "WorkerFailed" and e.type == "Warning" for e in events)


def test_reconcile_does_not_recreate_pods_of_a_finished_job(manifest):
    reconciler, _, _ = make_reconciler(manifest)
    manifest["status"] = {"phase": "Succeeded"}
    reconciler.reconcile(manifest)
    assert not [k for k in reconciler.kube.objects if k[0] == "Pod"]


def test_reconcile_reports_an_unrunnable_spec(manifest):
    manifest["spec"]["training"]["globalBatchSize"] = 33
    reconciler, events, _ = make_reconciler(manifest)
    reconciler.reconcile(manifest)
    assert manifest["status"]["phase"] == "Failed"
    (condition,) = manifest["status"]["conditions"]
    assert condition["reason"] == "InvalidSpec" and "globalBatchSize (33)" in condition["message"]
    assert reconciler.kube.objects == {}
