"""MultiKueue (issue 20). Worker side: a job copied here by MultiKueue (label kueue.x-k8s.io/prebuilt-workload-name, no
managedBy) adopts the Workload MultiKueue created instead of creating one. Manager side (spec.managedBy): one Workload,
never one for a job that ended. Tables of the decisions, the lifecycle of such a job, and the reconciler against the fake
API server of test_kueue_workload.py. With real clusters: tests/e2e/test_multikueue_clusters.py."""

from __future__ import annotations

import copy

import pytest

from llm_operator import kueue
from llm_operator.api import parse_job
from llm_operator.multikueue import ADOPT, FOREIGN, JOB_UID_LABEL, PREBUILT_WORKLOAD_LABEL, USE, WAIT, adoption, adoption_patch, manager_creates_workload

from test_kueue_workload import ADMISSION, ADMITTED, QUEUE, kueue_reconciler, run
from test_lifecycle import UID, conditions
from test_reconcile import reconcile

PREBUILT = "demo-1a2b3c4d"  # the manager's Workload name: <job>-<hash of the manager job's UID>


@pytest.fixture
def copied(manifest):
    """The job as MultiKueue creates it on the worker: the manager's labels (its queue) plus the prebuilt-workload label."""
    manifest["metadata"]["labels"] = {kueue.QUEUE_NAME_LABEL: QUEUE, PREBUILT_WORKLOAD_LABEL: PREBUILT,
                                      "kueue.x-k8s.io/multikueue-origin": "manager"}
    return manifest


def multikueue_workload(*owners, rv="3"):
    return {"metadata": {"name": PREBUILT, "namespace": "team-a", "uid": "wl-uid", "resourceVersion": rv,
                         "labels": {"kueue.x-k8s.io/multikueue-origin": "manager"}, "ownerReferences": list(owners)}}


OURS = {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "name": "demo", "uid": UID, "controller": True}
OTHER = {"apiVersion": "batch/v1", "kind": "Job", "name": "demo", "uid": "someone-else", "controller": True}
NOT_CONTROLLER = {"apiVersion": "v1", "kind": "ConfigMap", "name": "keep", "uid": "cm-uid"}


@pytest.mark.parametrize("workload, action", [
    (None, WAIT),  # MultiKueue creates the Workload before the job, but the watch may bring the job first
    (multikueue_workload(), ADOPT),  # as MultiKueue creates it: no owner references
    (multikueue_workload(NOT_CONTROLLER), ADOPT),  # an owner that does not control it is no obstacle
    (multikueue_workload(OURS), USE),
    (multikueue_workload(OTHER), FOREIGN),  # never taken from another controller (as jobframework)
])
def test_adoption_decision(copied, workload, action):
    plan = adoption(parse_job(copied), workload)
    assert plan.action == action and PREBUILT in plan.message
    if action == FOREIGN:
        assert "Job demo (uid someone-else)" in plan.message


def test_adoption_patch_makes_the_job_its_controller_keeping_other_owners_and_labels_it_for_the_watch(copied):
    job = parse_job(copied)
    patch = adoption_patch(job, multikueue_workload(NOT_CONTROLLER, rv="42"))
    assert patch["metadata"]["resourceVersion"] == "42"  # a precondition: Kueue may write meanwhile
    assert patch["metadata"]["ownerReferences"][0] == NOT_CONTROLLER
    assert patch["metadata"]["ownerReferences"][1] == {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "name": "demo",
                                                        "uid": UID, "controller": True, "blockOwnerDeletion": True}
    assert patch["metadata"]["labels"] == {"llmtraining.dev/job-name": "demo", JOB_UID_LABEL: UID}


def test_the_prebuilt_name_is_the_jobs_workload_name(copied, manifest):
    assert kueue.workload_name(parse_job(copied)) == PREBUILT  # also what the topology-gated pods name (kueue.gate_for_topology)


def test_a_copied_job_waits_for_its_workload_and_never_creates_one(copied):
    job = parse_job(copied)
    decision = run(job, [])
    assert not decision.create_workload and not decision.create_pods
    assert conditions(decision.status)["Queued"] == ("True", "WaitingForPrebuiltWorkload")
    assert PREBUILT_WORKLOAD_LABEL in decision.status["conditions"][0]["message"]
    admitted = run(job, [], decision.status, now=1, wl=ADMITTED)  # adopted and admitted by the worker's Kueue
    assert admitted.create_pods and not admitted.create_workload
    assert conditions(admitted.status)["Queued"] == ("False", "Admitted")


def test_a_copied_job_is_queued_even_without_a_queue_label(copied):
    del copied["metadata"]["labels"][kueue.QUEUE_NAME_LABEL]
    decision = run(parse_job(copied), [])
    assert not decision.create_pods and conditions(decision.status)["Queued"][1] == "WaitingForPrebuiltWorkload"


def test_a_suspended_copy_keeps_multikueues_workload(copied):
    copied["spec"]["runPolicy"] = {"suspend": True}
    decision = run(parse_job(copied), [], wl=ADMITTED)
    assert not decision.delete_workload


def test_reconciler_adopts_the_prebuilt_workload_and_runs_the_gang(copied):
    reconciler, _ = kueue_reconciler(copied)
    kube = reconciler.kube
    stored: dict = {}

    def get_workload(namespace, name):
        kube.calls.append(("get-workload", name))
        return copy.deepcopy(stored.get(name))

    def patch_workload(namespace, name, patch):
        kube.calls.append(("patch-workload", name))
        wl = stored[name]
        assert patch["metadata"]["resourceVersion"] == wl["metadata"]["resourceVersion"]
        wl["metadata"]["ownerReferences"] = patch["metadata"]["ownerReferences"]
        wl["metadata"]["labels"] = {**wl["metadata"]["labels"], **patch["metadata"]["labels"]}
        kube.objects[("Workload", name)] = wl
        return copy.deepcopy(kube._stamp(wl))

    kube.get_workload, kube.patch_workload = get_workload, patch_workload
    reconcile(reconciler, copied)  # MultiKueue has not created it yet: the job waits, nothing is created
    assert [c for c in kube.calls if c[0] != "status"] == [("get-workload", PREBUILT)] and kube.pods() == []
    assert copied["status"]["phase"] == "Pending"

    stored[PREBUILT] = {**multikueue_workload(), "spec": {"queueName": QUEUE}}
    reconcile(reconciler, copied)
    assert ("patch-workload", PREBUILT) in kube.calls and not any(c[0] == "create" and c[1][0] == "Workload" for c in kube.calls)
    assert kube.workload()["metadata"]["ownerReferences"][0]["uid"] == UID
    kube.kueue_sets(("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"), admission=ADMISSION)
    kube.calls.clear()
    reconcile(reconciler, copied)
    assert len(kube.pods()) == 2 and ("get-workload", PREBUILT) not in kube.calls  # the view has it now: no more lookups


# ============================================================== the manager side: spec.managedBy
@pytest.mark.parametrize("queue, has_workload, phase, creates", [
    (QUEUE, False, None, True),  # a new job: its Workload, which MultiKueue dispatches
    (QUEUE, False, "Pending", True),
    (QUEUE, False, "Running", True),  # its Workload deleted under it (by hand): Kueue has nothing to keep it on a worker without one
    (QUEUE, True, None, False),  # one Workload per job
    (None, False, None, False),  # no LocalQueue named: nothing to queue it in
    (QUEUE, False, "Succeeded", False),  # ended on the worker (its status copied back), Workload gone: it would run again
    (QUEUE, False, "Failed", False),
])
def test_the_manager_creates_a_workload_for_a_queued_job_that_has_none_and_has_not_ended(queue, has_workload, phase, creates):
    status = {} if phase is None else {"phase": phase}
    assert manager_creates_workload(queue, has_workload, status) is creates


def test_a_dispatched_job_that_ended_gets_no_new_workload_when_kueue_deleted_its_own(manifest):
    manifest["metadata"]["labels"] = {kueue.QUEUE_NAME_LABEL: QUEUE}
    manifest["spec"]["managedBy"] = "kueue.x-k8s.io/multikueue"
    manifest["status"] = {"phase": "Succeeded", "restarts": 0}  # MultiKueue's copy of the worker's status
    reconciler, events = kueue_reconciler(manifest)
    reconcile(reconciler, manifest)  # its finished Workload deleted (Kueue's objectRetentionPolicies): the view has none
    assert reconciler.kube.calls == [] and events == [] and manifest["status"] == {"phase": "Succeeded", "restarts": 0}
