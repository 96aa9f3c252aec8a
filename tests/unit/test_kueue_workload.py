"""Kueue: the Workload the operator writes (kueue.py) and the lifecycle of a queued job (lifecycle.decide with
--kueue), as tables. Pure: Workloads are dicts as the API returns them (kueue.slim_workload), the clock a parameter."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from kubernetes.client.exceptions import ApiException

from llm_operator import kueue
from llm_operator.api import parse_job
from llm_operator.lifecycle import decide
from llm_operator.reconcile import Reconciler
from llm_operator.render import RenderContext, build_worker_pod
from llm_operator.view import ClusterView, slim_job

from test_lifecycle import SETTINGS, UID, at, conditions, gang, pod, ts
from test_reconcile import FakeKube, reconcile

KUEUE_SETTINGS = replace(SETTINGS, kueue=True)
QUEUE = "team-queue"


@pytest.fixture
def make_job(manifest):
    def make(queue=QUEUE, priority=None, **run_policy):
        labels = {}
        if queue:
            labels[kueue.QUEUE_NAME_LABEL] = queue
        if priority:
            labels[kueue.PRIORITY_CLASS_LABEL] = priority
        manifest["metadata"]["labels"] = labels
        manifest["spec"]["runPolicy"] = run_policy
        return parse_job(manifest)
    return make


def workload(*conds, admission=None, rv="7", generation=1):
    """A Workload with these conditions: (type, status[, reason[, message]])."""
    conditions = [{"type": c[0], "status": c[1], "reason": c[2] if len(c) > 2 else "R", "message": c[3] if len(c) > 3 else "",
                   "lastTransitionTime": ts(0)} for c in conds]
    body = {"metadata": {"name": "demo-wl", "namespace": "team-a", "uid": "wl-uid", "resourceVersion": rv, "generation": generation,
                         "labels": {"llmtraining.dev/job-name": "demo"}, "ownerReferences": [{"uid": UID}]},
            "status": {"conditions": conditions}}
    if admission:
        body["status"]["admission"] = {"clusterQueue": admission, "podSetAssignments": []}
    return kueue.slim_workload(body)


PENDING = workload(("QuotaReserved", "False", "Pending", "couldn't assign flavors to pod set workers: insufficient quota"))
ADMITTED = workload(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"), admission="cq")
EVICTED = workload(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"),
                   ("Evicted", "True", "Preempted", "Preempted to accommodate a workload"), admission="cq")
EVICTED_RELEASED = workload(("QuotaReserved", "False", "Pending"), ("Admitted", "False", "NoReservation"),
                            ("Evicted", "True", "Preempted", "Preempted to accommodate a workload"), ("Requeued", "True", "Preempted"))


def run(job, pods, previous=None, now=0, wl=None, settings=KUEUE_SETTINGS):
    return decide(job, 1, pods, previous, at(now), observed_since=at(-3600), settings=settings, workload=wl)


# ============================================================================== the Workload written
def test_workload_has_one_podset_of_all_workers_and_is_owned_by_the_job(make_job):
    job = make_job(priority="high")
    worker = build_worker_pod(job, 0, RenderContext())
    wl = kueue.build_workload(job, worker, priority=1000)
    assert wl["apiVersion"] == "kueue.x-k8s.io/v1beta2" and wl["kind"] == "Workload"
    assert wl["spec"]["queueName"] == QUEUE
    assert [(p["name"], p["count"]) for p in wl["spec"]["podSets"]] == [("workers", 2)]
    assert wl["spec"]["podSets"][0]["template"]["spec"]["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "4"}}
    assert wl["spec"]["priorityClassRef"] == {"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": "high"}
    assert wl["spec"]["priority"] == 1000
    assert wl["metadata"]["ownerReferences"][0]["uid"] == UID and wl["metadata"]["ownerReferences"][0]["controller"] is True
    assert wl["metadata"]["labels"]["llmtraining.dev/job-name"] == "demo"
    assert wl["metadata"]["labels"][kueue.QUEUE_NAME_LABEL] == QUEUE


def test_workload_name_follows_the_job_uid(make_job, manifest):
    first = kueue.workload_name(make_job())
    assert first.startswith("demo-") and first == kueue.workload_name(make_job())
    manifest["metadata"]["uid"] = "another-uid"
    assert kueue.workload_name(parse_job(manifest)) != first  # a namesake job never takes the old Workload


def test_no_priority_class_means_no_priority(make_job):
    job = make_job()
    wl = kueue.build_workload(job, build_worker_pod(job, 0, RenderContext()))
    assert "priorityClassRef" not in wl["spec"] and "priority" not in wl["spec"]


def test_unlabelled_job_has_no_workload(make_job):
    job = make_job(queue=None)
    with pytest.raises(ValueError, match="queue-name"):
        kueue.build_workload(job, build_worker_pod(job, 0, RenderContext()))


@pytest.mark.parametrize("wl, may_run, reserved, evicted, pending", [
    (None, False, False, False, ""),
    (PENDING, False, False, False, "couldn't assign flavors to pod set workers: insufficient quota"),
    (ADMITTED, True, True, False, ""),
    (EVICTED, False, True, True, ""),
    (EVICTED_RELEASED, False, False, True, ""),
    (workload(("Admitted", "True"), ("Finished", "True", "Succeeded"), admission="cq"), False, True, False, ""),
], ids=["none", "pending", "admitted", "evicted", "evicted-released", "finished"])
def test_admission_of(wl, may_run, reserved, evicted, pending):
    admission = kueue.admission_of(wl)
    assert (admission.may_run, admission.reserved, admission.evicted is not None, admission.pending_message) == (may_run, reserved, evicted, pending)


@pytest.mark.parametrize("reason, requeued", [("Preempted", "True"), ("NodeFailures", "True"), ("Deactivated", "False")])
def test_release_quota_patch_is_what_jobframework_writes(reason, requeued):
    wl = workload(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"), ("Evicted", "True", reason, "why"),
                  admission="cq")
    patch = kueue.release_quota_patch(wl, ts(5))
    assert patch["metadata"] == {"resourceVersion": "7"}  # a precondition: Kueue writes these conditions too
    assert patch["status"]["admission"] is None
    got = {c["type"]: (c["status"], c["reason"]) for c in patch["status"]["conditions"]}
    assert got == {"QuotaReserved": ("False", "Pending"), "Admitted": ("False", "NoReservation"), "Evicted": ("True", reason),
                   "Requeued": (requeued, reason)}
    assert all(c["lastTransitionTime"] == ts(5) for c in patch["status"]["conditions"] if c["type"] in ("QuotaReserved", "Admitted", "Requeued"))
    assert wl["status"]["conditions"][0]["status"] == "True"  # the view's copy is untouched


def test_admitted_flavors_place_the_gang(make_job):
    body = {"metadata": {"name": "w", "namespace": "team-a", "uid": "u", "ownerReferences": [{"uid": UID}]},
            "status": {"conditions": [{"type": "Admitted", "status": "True"}], "admission": {"clusterQueue": "cq", "podSetAssignments": [
                {"name": "workers", "flavors": {"nvidia.com/gpu": "h100", "cpu": "default"}, "count": 2}]}}}
    assert kueue.admission_of(kueue.slim_workload(body)).flavors == ("default", "h100")
    job = make_job()
    worker = build_worker_pod(job, 0, RenderContext())
    gpu_toleration = worker["spec"]["tolerations"][0]
    reserved = {"key": "reserved", "operator": "Exists", "effect": "NoSchedule"}
    placed = kueue.place_on_flavors(worker, [
        {"spec": {"nodeLabels": {"nvidia.com/gpu.product": "H100"}, "tolerations": [reserved, gpu_toleration]}},
        {"spec": {}},
    ])
    assert placed["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert placed["spec"]["tolerations"] == [gpu_toleration, reserved]  # each once
    assert "nodeSelector" not in worker["spec"]  # the rendered pod is untouched


def test_finish_patch():
    patch = kueue.finish_patch(ADMITTED, succeeded=False, message="backoffLimit spent", now=ts(9))
    finished = next(c for c in patch["status"]["conditions"] if c["type"] == "Finished")
    assert (finished["status"], finished["reason"], finished["message"]) == ("True", "Failed", "backoffLimit spent")
    assert "admission" not in patch["status"]


# ====================================================================================== the lifecycle
def test_queued_job_creates_its_workload_and_no_pods(make_job):
    job = make_job()
    decision = run(job, [])
    assert decision.create_workload and not decision.create_pods
    assert decision.status["phase"] == "Pending"
    assert conditions(decision.status) == {"Queued": ("True", "WaitingForAdmission"), "Ready": ("False", "Queued"), "Reconciling": ("True", "Queued")}
    assert decision.status["conditions"][0]["message"] == f"waiting for Kueue admission in LocalQueue {QUEUE}"
    assert [e.reason for e in decision.events] == ["WaitingForAdmission"]


def test_pending_workload_says_why_it_waits(make_job):
    job = make_job()
    first = run(job, [], wl=None)
    waiting = run(job, [], first.status, now=1, wl=PENDING)
    assert not waiting.create_workload and not waiting.create_pods and waiting.workload_patch is None
    assert waiting.status["conditions"][0]["message"] == (f"waiting for Kueue admission in LocalQueue {QUEUE}: "
                                                          "couldn't assign flavors to pod set workers: insufficient quota")
    assert waiting.events == []  # still queued: no new Event


def test_admitted_job_creates_its_gang(make_job):
    job = make_job()
    queued = run(job, [], wl=PENDING)
    admitted = run(job, [], queued.status, now=2, wl=ADMITTED)
    assert admitted.create_pods and not admitted.create_workload
    assert conditions(admitted.status)["Queued"] == ("False", "Admitted")
    assert "ClusterQueue cq" in admitted.status["conditions"][0]["message"]
    assert [e.reason for e in admitted.events] == ["Admitted"]
    running = run(job, gang(), run(job, gang("Pending"), admitted.status, now=3, wl=ADMITTED).status, now=4, wl=ADMITTED)
    assert running.status["phase"] == "Running" and running.workload_patch is None


def running_queued(job):
    admitted = run(job, [], run(job, [], wl=PENDING).status, now=1, wl=ADMITTED)
    created = run(job, gang("Pending"), admitted.status, now=2, wl=ADMITTED)
    return run(job, gang(), created.status, now=3, wl=ADMITTED).status


def test_eviction_stops_the_gang_uncounted_then_releases_the_quota(make_job):
    job = make_job()
    running = running_queued(job)
    evicted = run(job, gang(), running, now=10, wl=EVICTED)
    assert sorted(evicted.delete_pods) == ["demo-worker-0", "demo-worker-1"]
    assert evicted.status["restarts"] == 1 and evicted.status["countedRestarts"] == 0
    assert evicted.status["phase"] == "Pending"
    assert conditions(evicted.status)["Queued"] == ("True", "Preempted")
    assert conditions(evicted.status)["Running"] == ("False", "Evicted")
    assert "SIGTERM" in next(c["message"] for c in evicted.status["conditions"] if c["type"] == "Queued")
    assert [e.reason for e in evicted.events] == ["Evicted"] and evicted.events[0].type == "Warning"
    assert evicted.workload_patch is None  # not while pods are left: they may still hold the GPUs

    stopping = run(job, gang(deleting=True), evicted.status, now=11, wl=EVICTED)
    assert stopping.status["restarts"] == 1 and stopping.workload_patch is None and stopping.events == []
    gone = run(job, [], stopping.status, now=12, wl=EVICTED)
    assert gone.workload_patch is not None and gone.workload_patch["status"]["admission"] is None
    assert not gone.create_pods
    requeued = run(job, [], gone.status, now=13, wl=EVICTED_RELEASED)
    assert requeued.workload_patch is None and not requeued.create_pods and not requeued.create_workload

    readmitted = run(job, [], requeued.status, now=40, wl=ADMITTED)
    assert readmitted.create_pods and readmitted.status["restarts"] == 1
    assert readmitted.status["suspendedSeconds"] == 30  # queued again from 10 s to 40 s: not counted by the deadline


def test_workload_deleted_under_a_running_gang_stops_it_and_queues_again(make_job):
    job = make_job()
    lost = run(job, gang(), running_queued(job), now=10, wl=None)
    assert sorted(lost.delete_pods) == ["demo-worker-0", "demo-worker-1"] and lost.create_workload
    assert lost.status["restarts"] == 1 and lost.status["countedRestarts"] == 0
    assert conditions(lost.status)["Queued"] == ("True", "AdmissionLost")
    assert "(it was deleted)" in next(c["message"] for c in lost.status["conditions"] if c["type"] == "Queued")


def test_eviction_of_a_job_not_yet_running_gives_the_quota_back_at_once(make_job):
    job = make_job()
    queued = run(job, [], wl=PENDING)
    decision = run(job, [], queued.status, now=1, wl=EVICTED)
    assert decision.status["restarts"] == 0 and decision.workload_patch is not None and decision.events == []


def test_finished_job_finishes_its_workload_once(make_job):
    job = make_job()
    running = running_queued(job)
    done = run(job, gang("Succeeded", exit_code=0), running, now=20, wl=ADMITTED)
    assert done.status["phase"] == "Succeeded"
    finished = next(c for c in done.workload_patch["status"]["conditions"] if c["type"] == "Finished")
    assert (finished["status"], finished["reason"]) == ("True", "Succeeded")
    wl_done = workload(("Admitted", "True"), ("Finished", "True", "Succeeded"), admission="cq")
    assert run(job, gang("Succeeded", exit_code=0), done.status, now=21, wl=wl_done).workload_patch is None


def test_failed_job_finishes_its_workload_as_failed(make_job):
    job = make_job(backoffLimit=0)
    running = running_queued(job)
    failed = run(job, [pod(0), pod(1, "Failed", exit_code=1)], running, now=20, wl=ADMITTED)
    assert failed.status["phase"] == "Failed"
    assert next(c for c in failed.workload_patch["status"]["conditions"] if c["type"] == "Finished")["reason"] == "Failed"


def test_suspended_queued_job_deletes_its_workload_and_queues_again_on_resume(make_job):
    job = make_job()
    running = running_queued(job)
    suspended = run(make_job(suspend=True), gang(), running, now=10, wl=ADMITTED)
    assert suspended.delete_workload and suspended.status["phase"] == "Suspended"
    assert conditions(suspended.status)["Queued"] == ("False", "JobSuspended")
    resumed = run(job, [], suspended.status, now=20, wl=None)
    assert resumed.create_workload and not resumed.create_pods
    assert conditions(resumed.status)["Queued"] == ("True", "WaitingForAdmission")
    readmitted = run(job, [], resumed.status, now=25, wl=ADMITTED)
    assert readmitted.create_pods and readmitted.status["suspendedSeconds"] == 15  # 10 s suspended, 5 s queued: each once


@pytest.mark.parametrize("settings, labelled, previous, expect_queued", [
    (KUEUE_SETTINGS, True, None, True),
    (KUEUE_SETTINGS, False, None, False),
    (SETTINGS, True, None, False),  # without --kueue the label is Kueue's business, not ours
    (KUEUE_SETTINGS, True, {"startTime": ts(-100), "phase": "Running"}, False),  # labelled after it started: not stopped
], ids=["labelled", "unlabelled", "kueue-off", "labelled-after-start"])
def test_which_jobs_are_queued(make_job, settings, labelled, previous, expect_queued):
    job = make_job(queue=QUEUE if labelled else None)
    decision = run(job, gang() if previous else [], previous, wl=None, settings=settings)
    assert decision.create_workload == expect_queued
    assert ("Queued" in conditions(decision.status)) == expect_queued


# ============================================================================================ the view
def test_view_keeps_kueue_labels_and_the_owned_workload(manifest):
    manifest["metadata"]["labels"] = {kueue.QUEUE_NAME_LABEL: QUEUE, "team": "a"}
    assert slim_job(manifest)["metadata"]["labels"] == {kueue.QUEUE_NAME_LABEL: QUEUE}
    view = ClusterView()
    body = {"metadata": {"name": "demo-wl", "namespace": "team-a", "uid": "wl-uid", "resourceVersion": "5",
                         "labels": {"llmtraining.dev/job-name": "demo"}, "ownerReferences": [{"uid": UID}]},
            "status": {"conditions": [{"type": "Admitted", "status": "True"}], "admission": {"clusterQueue": "cq"}}}
    assert view.observe_workload(body) == ("team-a", "demo")
    assert view.observe_workload(body) is None  # nothing changed
    assert view.workload("team-a", "demo", UID)["status"]["admission"] == {"clusterQueue": "cq", "flavors": []}
    assert view.workload("team-a", "demo", "a-namesake-uid") is None
    assert view.observe_workload(body, deleted=True) == ("team-a", "demo")
    assert view.workload("team-a", "demo", UID) is None


def test_a_relisting_forgets_a_workload_deleted_meanwhile():
    view = ClusterView()
    body = {"metadata": {"name": "demo-wl", "namespace": "team-a", "uid": "wl-uid", "resourceVersion": "5",
                         "labels": {"llmtraining.dev/job-name": "demo"}, "ownerReferences": [{"uid": UID}]}, "status": {}}
    view.observe_workload(body)
    assert view.replace_workloads([body], "10") == set()  # still there, unchanged
    assert view.replace_workloads([], "10", {"team-b"}) == set()  # another namespace's listing
    assert view.replace_workloads([], "10") == {("team-a", "demo")}
    assert view.workload("team-a", "demo", UID) is None


# ======================================================================= the reconciler (fake API server)
class KueueKube(FakeKube):
    """The fake API server of test_reconcile.py, with Kueue's objects: Workloads in the view as the watch
    brings them, WorkloadPriorityClasses and ResourceFlavors to read."""

    priorities = {"high": 1000}
    flavors = {"h100": {"spec": {"nodeLabels": {"gpu": "h100"}, "tolerations": [{"key": "reserved", "operator": "Exists"}]}}}

    def create_if_absent(self, obj):
        created, current = super().create_if_absent(obj)
        if obj["kind"] == "Workload":
            self.view.observe_workload(copy.deepcopy(current))
        return created, current

    def workload_priority(self, name):
        if name not in self.priorities:
            raise ApiException(status=404, reason="Not Found")
        return self.priorities[name]

    def resource_flavor(self, name):
        return self.flavors[name]

    def workload(self):
        return next(o for (kind, _), o in self.objects.items() if kind == "Workload")

    def kueue_sets(self, *conds, admission=None):
        """Kueue writes the Workload's status."""
        wl = self.workload()
        wl["status"] = {"conditions": [{"type": t, "status": s, "reason": r, "message": r} for t, s, r in conds]}
        if admission:
            wl["status"]["admission"] = admission
        self.view.observe_workload(copy.deepcopy(self._stamp(wl)))

    def patch_workload_status(self, namespace, name, patch):
        self.calls.append(("workload-status", name))
        wl = self.objects[("Workload", name)]
        status = {**wl.get("status", {}), **patch["status"]}
        wl["status"] = {k: v for k, v in status.items() if v is not None}
        return copy.deepcopy(self._stamp(wl))

    def delete_workload(self, namespace, name):
        self.calls.append(("delete-workload", name))
        self.objects.pop(("Workload", name))


def kueue_reconciler(body):
    view = ClusterView()
    events: list = []
    reconciler = Reconciler(kube=KueueKube(body, view), view=view, ctx=RenderContext(), emit=lambda b, e: events.append(e),
                            generate_ssh_keys=lambda: {}, settings=KUEUE_SETTINGS)
    return reconciler, events


ADMISSION = {"clusterQueue": "cq", "podSetAssignments": [{"name": "workers", "flavors": {"nvidia.com/gpu": "h100"}, "count": 2}]}


def test_reconciler_queues_places_evicts_and_finishes(manifest):
    manifest["metadata"]["labels"] = {kueue.QUEUE_NAME_LABEL: QUEUE, kueue.PRIORITY_CLASS_LABEL: "high"}
    reconciler, events = kueue_reconciler(manifest)
    kube = reconciler.kube
    reconcile(reconciler, manifest)
    wl = kube.workload()
    assert wl["spec"]["priority"] == 1000 and kube.pods() == []
    assert manifest["status"]["phase"] == "Pending" and "WaitingForAdmission" in [e.reason for e in events]

    kube.kueue_sets(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"), admission=ADMISSION)
    reconcile(reconciler, manifest)
    assert len(kube.pods()) == 2
    for worker in kube.pods():
        assert worker["spec"]["nodeSelector"] == {"gpu": "h100"} and {"key": "reserved", "operator": "Exists"} in worker["spec"]["tolerations"]

    kube.kueue_sets(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"), ("Evicted", "True", "Preempted"),
                    admission=ADMISSION)
    kube.calls.clear()
    reconcile(reconciler, manifest)  # the fake deletes pods at once: the quota goes back in the next reconcile
    assert kube.pods() == [] and [c[0] for c in kube.calls] == ["status", "delete", "delete"]
    reconcile(reconciler, manifest)
    assert kube.calls[-1][0] == "workload-status" and "admission" not in kube.workload()["status"]
    assert manifest["status"]["restarts"] == 1 and manifest["status"]["countedRestarts"] == 0


def test_missing_priority_class_is_told_on_the_job_and_retried(manifest):
    manifest["metadata"]["labels"] = {kueue.QUEUE_NAME_LABEL: QUEUE, kueue.PRIORITY_CLASS_LABEL: "nonexistent"}
    reconciler, events = kueue_reconciler(manifest)
    with pytest.raises(ApiException):
        reconcile(reconciler, manifest)
    assert [e.reason for e in events] == ["WorkloadPriorityClassNotFound"] and "nonexistent" in events[0].message


def test_kueue_paths():
    from llm_operator.kube import kueue_path, path_of

    assert path_of("Workload", "team-a", "w", api_version=kueue.API_VERSION) == kueue_path("team-a", "w") \
        == "/apis/kueue.x-k8s.io/v1beta2/namespaces/team-a/workloads/w"
    assert kueue_path(None) == "/apis/kueue.x-k8s.io/v1beta2/workloads"
    assert kueue_path(None, "high", "workloadpriorityclasses") == "/apis/kueue.x-k8s.io/v1beta2/workloadpriorityclasses/high"
