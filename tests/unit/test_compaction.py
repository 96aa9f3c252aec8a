"""A finished job's compaction (compaction.py, view.ClusterView.settle, job_loop.py): it happens only when nothing
but the TTL can change the job's next decision, that decision is the same without the job's ended pods, and the
compacted job comes back whole when it changes or its TTL fires."""

from __future__ import annotations

import asyncio
import copy

import pytest
from test_lifecycle import UID, gang, make_job, pod, run, running_status  # noqa: F401  (make_job: a fixture)
from test_view import api_pod

from llm_operator.api.contract import final_state_line
from llm_operator.compaction import is_settled
from llm_operator.draft import Decision
from llm_operator.job_loop import JobLoops
from llm_operator.kube import Listing
from llm_operator.lifecycle import status_patch
from llm_operator.reconcile import Outcome
from llm_operator.view import ClusterView


def finished_pods(total: int):
    final = final_state_line({"step": total, "totalSteps": total, "loss": 2.0, "outcome": "complete",
                              "lastCheckpoint": {"step": total, "tag": f"global_step{total}"}})
    return [pod(0, "Succeeded", exit_code=0, finished=20, message=f"training complete (exit 0)\n{final}"),
            pod(1, "Succeeded", exit_code=0, finished=20)]


def settled_status(job, pods):
    """The status once the operator has written what the job's end decided (and read it back)."""
    status = run(job, pods, running_status(job), now=30).status
    again = run(job, pods, status, now=31)
    assert status_patch(status, again.status) == {}
    return status


# ------------------------------------------------------------------------------------------- pure rule
def test_a_finished_job_with_ended_pods_is_settled_once_its_decision_is_written(make_job):  # noqa: F811  (the fixture)
    job = make_job()
    pods = finished_pods(job.spec.training.steps)
    ending = run(job, pods, running_status(job), now=30)  # writes Succeeded, and its Event
    assert ending.status["phase"] == "Succeeded" and ending.events
    assert is_settled(ending, pods, count_waits=False)
    ending.workload_patch = {"status": {"conditions": [{"type": "Finished", "status": "True"}]}}  # written with the status
    assert is_settled(ending, pods, count_waits=False)
    assert is_settled(run(job, pods, settled_status(job, pods), now=40), pods, count_waits=False)
    assert is_settled(run(job, [], settled_status(job, pods), now=40), [], count_waits=False)


@pytest.mark.parametrize("why", ["running", "terminating", "count waits", "stops", "deletes", "workload", "not finished"])
def test_a_job_is_not_settled_while_something_can_still_change(make_job, why):  # noqa: F811  (the fixture)
    job = make_job()
    pods = finished_pods(job.spec.training.steps)
    decision = run(job, pods, settled_status(job, pods), now=40)
    count_waits = why == "count waits"
    if why == "running":
        pods = [pods[0], pod(1)]
    elif why == "terminating":
        pods = [pods[0], pod(1, "Succeeded", exit_code=0, deleting=True)]
    elif why == "stops":
        decision.delete_pods = ["demo-worker-1"]
    elif why == "deletes":
        decision.delete_job = True  # its TTL passed: the job goes, and its DELETED event with it
    elif why == "workload":
        decision.delete_workload = True
    elif why == "not finished":
        decision = run(job, gang(), running_status(job), now=40)
    assert not is_settled(decision, pods, count_waits=count_waits)


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_a_finished_jobs_decision_is_the_same_without_its_ended_pods(make_job, outcome):  # noqa: F811  (the fixture)
    """What settling relies on: dropping a finished job's ended pods changes nothing its decisions write."""
    job = make_job(ttlSecondsAfterFinished=3600)
    if outcome == "succeeded":
        pods = finished_pods(job.spec.training.steps)
    else:
        job = make_job(ttlSecondsAfterFinished=3600, backoffLimit=0)
        pods = [pod(0, "Failed", exit_code=1, finished=20, message="boom"), pod(1, "Failed", exit_code=1, finished=21)]
    status = settled_status(job, pods)
    assert status["phase"] == ("Succeeded" if outcome == "succeeded" else "Failed")
    with_pods, without = run(job, pods, status, now=50), run(job, [], status, now=50)
    assert status_patch(status, without.status) == {} and without.status == with_pods.status
    assert without.wake_after == with_pods.wake_after and without.wake_after is not None  # the TTL's clock is kept


# ------------------------------------------------------------------------------------------------ view
def api_job(version="5", uid=UID, phase="Succeeded", name="demo"):
    return {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob",
            "metadata": {"name": name, "namespace": "team-a", "uid": uid, "resourceVersion": version,
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"nodes": 2}, "status": {"phase": phase, "completionTime": "2026-01-01T00:00:00Z"}}


def settled_view() -> ClusterView:
    view = ClusterView()
    view.observe_job(api_job())
    view.observe_pod(api_pod(0, phase="Succeeded", exit_code=0))
    view.observe_pod(api_pod(1, phase="Succeeded", exit_code=0))
    assert view.settle("team-a", "demo", UID)
    return view


def test_settling_drops_the_pods_and_keeps_a_digest():
    view = settled_view()
    assert view.is_settled("team-a", "demo") and view.job("team-a", "demo") is None
    assert view.pods("team-a", "demo", UID) == [] and view.size() == (1, 0)
    assert view.job_keys() == [("team-a", "demo")] and view.jobs_in("team-a") == [("team-a", "demo")]
    assert view.observe_pod(api_pod(0, version="20", phase="Succeeded", exit_code=0)) is None  # a late event: not kept
    assert view.size() == (1, 0)


def test_a_settled_job_stays_settled_for_an_event_that_changes_nothing():
    view = settled_view()
    unchanged = api_job(version="6")
    unchanged["metadata"]["annotations"] = {"touched": "yes"}  # not read by any decision
    assert view.observe_job(unchanged) is False and view.is_settled("team-a", "demo")
    assert view.observe_job(api_job(version="4", phase="Running")) is False  # older than what it held
    assert view.is_settled("team-a", "demo")


def test_a_settled_job_that_changes_is_held_whole_again():
    view = settled_view()
    changed = api_job(version="7")
    changed["status"]["phase"] = "Failed"  # someone wrote its status
    assert view.observe_job(changed) is True
    assert not view.is_settled("team-a", "demo") and view.job("team-a", "demo")["status"]["phase"] == "Failed"


def test_a_namesake_of_a_settled_job_replaces_it():
    view = settled_view()
    assert view.observe_job(api_job(version="9", uid="new-uid", phase="Pending")) is True
    assert not view.is_settled("team-a", "demo") and view.job("team-a", "demo")["metadata"]["uid"] == "new-uid"


def test_a_settled_job_is_forgotten_on_delete_and_by_a_relisting():
    view = settled_view()
    assert view.forget_job(api_job(uid="other")) is False and view.is_settled("team-a", "demo")  # a namesake's DELETED
    assert view.forget_job(api_job()) is True and view.job_keys() == []
    assert view.observe_job(api_job(version="8")) is False  # a late event of the deleted job
    view = settled_view()
    assert view.replace_jobs([], "10") == {("team-a", "demo")} and view.job_keys() == []


def test_recall_brings_a_settled_job_back_whole():
    view = settled_view()
    assert view.recall_job(api_job(uid="other")) is False and view.is_settled("team-a", "demo")
    assert view.recall_job(api_job(version="6")) is True
    assert view.job("team-a", "demo")["status"]["phase"] == "Succeeded" and not view.is_settled("team-a", "demo")


# ------------------------------------------------------------------------------------------- job loop
class OneJob:
    """The API server holds one finished job; get_job counts its reads."""

    def __init__(self):
        self.gets = 0

    def list(self, kind, namespace=None):
        return Listing(lambda _: {"metadata": {"resourceVersion": "1"}, "items": []})

    def get_job(self, namespace, name):
        self.gets += 1
        return api_job(version="30")


class SettlingReconciler:
    """Reads the job as the real one does (view, else a settled job's GET) and settles it, with a TTL of `wake` s."""

    def __init__(self, wake):
        self.kube, self.view, self.wake, self.calls = OneJob(), ClusterView(), wake, 0

    def reconcile_by_name(self, namespace, name, observed_since, reported):
        self.calls += 1
        if self.view.job(namespace, name) is None:
            assert self.view.recall_job(copy.deepcopy(self.kube.get_job(namespace, name)))
        return Outcome(Decision(status={"phase": "Succeeded"}, wake_after=self.wake), None, settled=True)


def test_a_settled_jobs_task_ends_and_its_ttl_starts_one_that_reads_the_job_once():
    async def scenario():
        reconciler = SettlingReconciler(wake=0.05)
        loops = JobLoops(reconciler, progress_interval=0)
        loops.on_job(None, api_job())
        task = loops._tasks[("team-a", "demo")]
        await asyncio.wait_for(task, timeout=5)  # settled: the task ends by itself
        settled = reconciler.view.is_settled("team-a", "demo"), reconciler.calls, reconciler.kube.gets
        loops.on_job("MODIFIED", api_job(version="6"))  # nothing changed: no task, no read
        no_task = ("team-a", "demo") not in loops._tasks
        while reconciler.calls < 2 or loops._tasks:  # the TTL's timer starts a task, which settles the job again
            await asyncio.sleep(0.01)
        await loops.stop_all()
        return settled, no_task, reconciler.calls, reconciler.kube.gets

    settled, no_task, calls, gets = asyncio.run(scenario())
    assert settled == (True, 1, 0) and no_task
    assert (calls, gets) == (2, 1)


def test_deleting_a_settled_job_cancels_its_ttl():
    async def scenario():
        reconciler = SettlingReconciler(wake=0.2)
        loops = JobLoops(reconciler, progress_interval=0)
        loops.on_job(None, api_job())
        await asyncio.wait_for(loops._tasks[("team-a", "demo")], timeout=5)
        loops.on_job("DELETED", api_job())
        await asyncio.sleep(0.4)
        return reconciler.calls, loops._tasks, loops._ttl_timers

    assert asyncio.run(scenario()) == (1, {}, {})


# ------------------------------------------------------------------------------------------ reconciler
def test_the_reconciler_settles_a_finished_job_and_reads_it_back_when_woken(manifest):
    from test_reconcile import SINCE, make_reconciler

    manifest["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 3600}
    manifest["status"] = {"phase": "Succeeded", "completionTime": "2099-01-01T00:00:00Z", "restarts": 0}
    reconciler, _, _ = make_reconciler(manifest)
    first = reconciler.reconcile_by_name("team-a", "demo", SINCE)
    if first.finishing is not None:  # the ready count and progress the decision adds: written once
        first.finishing.result(timeout=10)
        reconciler.view.observe_job(reconciler.kube.body)
        first = reconciler.reconcile_by_name("team-a", "demo", SINCE)
    assert first.settled and first.decision.wake_after is not None
    uid = reconciler.view.job("team-a", "demo")["metadata"]["uid"]
    assert reconciler.view.settle("team-a", "demo", uid)
    reads = []
    reconciler.kube.get_job = lambda namespace, name: reads.append(name) or copy.deepcopy(reconciler.kube.body)
    again = reconciler.reconcile_by_name("team-a", "demo", SINCE)
    assert reads == ["demo"] and again is not None and again.settled and not reconciler.view.is_settled("team-a", "demo")


def test_a_settled_job_deleted_meanwhile_is_gone_when_woken(manifest):
    from test_reconcile import SINCE, make_reconciler

    manifest["status"] = {"phase": "Succeeded", "completionTime": "2099-01-01T00:00:00Z"}
    reconciler, _, _ = make_reconciler(manifest)
    assert reconciler.view.settle("team-a", "demo", reconciler.view.job("team-a", "demo")["metadata"]["uid"])
    reconciler.kube.get_job = lambda namespace, name: None
    assert reconciler.reconcile_by_name("team-a", "demo", SINCE) is None and reconciler.view.job_keys() == []


def test_kopf_keeps_no_memory_of_the_objects_it_has_seen():
    from llm_operator.kopf_memory import EventOnlyMemories

    memories = EventOnlyMemories()
    memory = asyncio.run(memories.recall({"metadata": {"uid": "pod-1"}}, noticed_by_listing=True))
    assert memory.noticed_by_listing and list(memories.iter_all_memories()) == []
