"""The watched view (view.py): slim pods decide like full ones, events never move it backwards, deleted
objects stay deleted, a relisting removes what went meanwhile; and view_sync.py fills it."""

from __future__ import annotations

import asyncio
import copy

import pytest
from test_lifecycle import UID, make_job, pod, run  # noqa: F401  (make_job: a fixture)

from llm_operator.kube import Listing
from llm_operator.view import ClusterView, is_newer, slim_pod
from llm_operator.view_sync import ViewSync


def api_pod(rank=0, *, version="10", uid=None, job="demo", namespace="team-a", **kw) -> dict:
    """A pod as the API server sends it: what lifecycle's tables use, plus what no decision reads."""
    p = pod(rank, uid=uid, **kw)
    p["metadata"].update(namespace=namespace, resourceVersion=version, annotations={"kubectl.kubernetes.io/restartedAt": "x"},
                         managedFields=[{"manager": "kubelet", "fieldsV1": {"f:status": {}}}], creationTimestamp="2026-11-27T10:00:00Z")
    p["metadata"]["labels"].update({"llmtraining.dev/job-name": job, "app.kubernetes.io/name": "llm-training-job"})
    p["metadata"]["ownerReferences"][0].update(apiVersion="llmtraining.dev/v1alpha1", kind="LLMTrainingJob", name=job, controller=True)
    p["spec"].update(containers=[{"name": "trainer", "image": "img", "env": [{"name": "X", "value": "1"}] * 20}], hostname=f"w{rank}")
    p["status"].update(hostIP="10.0.0.9", qosClass="BestEffort", startTime="2026-11-27T10:00:00Z",
                       conditions=p["status"]["conditions"] + [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-27T10:00:00Z"}])
    for status in p["status"].get("containerStatuses", []):
        status.update(image="img", imageID="sha", containerID="containerd://1", restartCount=0, ready=False)
    return p


STATES = {
    "running": dict(),
    "pending": dict(phase="Pending"),
    "failed": dict(phase="Failed", exit_code=137, finished=5, message="killed"),
    "oom": dict(phase="Failed", exit_code=137, reason="OOMKilled", finished=3),
    "nccl": dict(phase="Failed", exit_code=1, message="NCCL error: unhandled system error"),
    "succeeded": dict(phase="Succeeded", exit_code=0),
    "deleting": dict(deleting=True),
    "evicted": dict(conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "drained",
                                 "lastTransitionTime": "2026-11-27T10:00:04Z"}]),
    "node lost": dict(ready=False, not_ready_since=10),
}


@pytest.mark.parametrize("state", sorted(STATES))
@pytest.mark.parametrize("previous", [None, {"phase": "Running", "restarts": 0, "conditions": [
    {"type": "Created", "status": "True", "lastTransitionTime": "2026-11-27T10:00:00Z"},
    {"type": "Running", "status": "True", "lastTransitionTime": "2026-11-27T10:00:01Z"}]}])
def test_slim_pods_decide_exactly_like_the_api_servers(make_job, state, previous):  # noqa: F811  (the fixture)
    job = make_job(backoffLimit=3, podFailurePolicy={"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                                                               {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}}]})
    full = [api_pod(0), api_pod(1, **STATES[state])]
    slim = [slim_pod(p) for p in full]
    assert run(job, slim, previous, now=100) == run(job, full, previous, now=100)
    assert len(repr(slim)) < len(repr(full)) / 2


def test_resource_versions_compare_as_numbers():
    assert is_newer("10", "9") and not is_newer("9", "10") and not is_newer("10", "10")
    assert is_newer("opaque", "10")  # not comparable: the latest arrival wins


def test_an_older_event_never_moves_a_pod_back():
    view = ClusterView()
    assert view.observe_pod(api_pod(0, phase="Pending", version="5")) == ("team-a", "demo")
    assert view.observe_pod(api_pod(0, version="7")) == ("team-a", "demo")  # Running
    assert view.observe_pod(api_pod(0, phase="Pending", version="6")) is None  # late: ignored
    (seen,) = view.pods("team-a", "demo", UID)
    assert seen["status"]["phase"] == "Running"


def test_an_event_no_decision_reads_wakes_nobody():
    view = ClusterView()
    view.observe_pod(api_pod(0, version="5"))
    touched = api_pod(0, version="6")
    touched["metadata"]["labels"]["team"] = "search"
    touched["metadata"]["annotations"]["note"] = "hello"
    touched["status"]["hostIP"] = "10.0.0.10"
    assert view.observe_pod(touched) is None


def test_a_deleted_pod_stays_deleted():
    view = ClusterView()
    created = api_pod(0, version="5", uid="a")
    view.observe_pod(created)
    assert view.observe_pod(api_pod(0, version="8", uid="a"), deleted=True) == ("team-a", "demo")
    assert view.observe_pod(api_pod(0, version="6", uid="a")) is None  # a late MODIFIED
    assert view.pods("team-a", "demo", UID) == []
    assert view.observe_pod(api_pod(0, version="9", uid="b", restart=1))  # the next gang's pod of the same name
    assert [p["metadata"]["uid"] for p in view.pods("team-a", "demo", UID)] == ["b"]
    assert view.observe_pod(api_pod(0, version="8", uid="a"), deleted=True) is None  # the old one's late DELETED


def test_pods_of_a_deleted_namesake_are_not_the_jobs():
    view = ClusterView()
    old = api_pod(0, version="5")
    old["metadata"]["ownerReferences"][0]["uid"] = "old-uid"
    view.observe_pod(old)
    assert view.pods("team-a", "demo", UID) == [] and len(view.pods("team-a", "demo", "old-uid")) == 1


def job_body(uid="u1", version="1", phase=None, name="demo"):
    body = {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob",
            "metadata": {"name": name, "namespace": "team-a", "uid": uid, "resourceVersion": version, "generation": 1,
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"}, "managedFields": [{}]},
            "spec": {"nodes": 2}}
    if phase:
        body["status"] = {"phase": phase}
    return body


def test_jobs_keep_the_newest_and_a_recreated_namesake_survives_the_old_ones_late_events():
    view = ClusterView()
    assert view.observe_job(job_body(version="1"))
    assert view.observe_job(job_body(version="3", phase="Created"))  # e.g. our own status patch's response
    assert not view.observe_job(job_body(version="2"))  # the watch catching up
    assert not view.observe_job(job_body(version="3", phase="Created"))  # the same again: nothing to do
    assert "annotations" not in view.job("team-a", "demo")["metadata"]
    view.observe_job(job_body(uid="u2", version="10"))  # deleted and applied again; its ADDED came first
    assert not view.forget_job(job_body(uid="u1", version="9"))  # the old one's DELETED: the new one stays
    assert not view.observe_job(job_body(uid="u1", version="4", phase="Running"))  # and its late events too
    assert view.job("team-a", "demo")["metadata"]["uid"] == "u2"
    assert view.forget_job(job_body(uid="u2", version="11")) and view.job("team-a", "demo") is None


def test_a_listing_removes_what_went_while_the_watch_was_away():
    view = ClusterView()
    for rank in range(3):
        view.observe_pod(api_pod(rank, version=str(10 + rank), uid=f"p{rank}"))
    view.observe_pod(api_pod(3, version="30", uid="p3"))  # created (merged from the response) after the listing below
    view.observe_job(job_body(uid="gone", name="other", version="5"))
    view.observe_job(job_body(version="6"))
    listed = [api_pod(0, version="20", uid="p0", phase="Failed", exit_code=1)]  # p1, p2 deleted meanwhile; p0 failed
    changed = view.replace_pods(listed, version="25")
    assert changed == {("team-a", "demo")}
    assert sorted(p["metadata"]["uid"] for p in view.pods("team-a", "demo", UID)) == ["p0", "p3"]
    assert view.replace_jobs([job_body(version="6")], version="25") == {("team-a", "other")}
    assert view.job_keys() == [("team-a", "demo")]


def test_a_listing_of_other_namespaces_leaves_these_alone():
    view = ClusterView()
    view.observe_pod(api_pod(0, version="5", namespace="team-b"))
    assert view.replace_pods([], version="25", namespaces={"team-a"}) == set()
    assert view.size() == (0, 1)


def test_a_namespace_starts_terminating_once():
    view = ClusterView()
    namespace = {"metadata": {"name": "team-a"}}
    assert not view.observe_namespace(namespace)
    namespace["metadata"]["deletionTimestamp"] = "2026-11-27T10:00:00Z"
    assert view.observe_namespace(namespace) and not view.observe_namespace(namespace)
    assert view.is_terminating("team-a")
    view.observe_namespace(namespace, deleted=True)
    assert not view.is_terminating("team-a")


# ------------------------------------------------------------------------------------------ view_sync
class ListingKube:
    def __init__(self):
        self.jobs, self.pods, self.lists = [], [], 0

    def list(self, kind, namespace=None):
        self.lists += 1
        items = copy.deepcopy(self.jobs if kind == "LLMTrainingJob" else self.pods)
        return Listing(lambda _: {"metadata": {"resourceVersion": "100"}, "items": items})


def test_sync_fills_the_view_once_then_sweeps_after_a_relisted_watch(monkeypatch):
    monkeypatch.setattr("llm_operator.view_sync.RELIST_SETTLE_SECONDS", 0.01)
    kube, view, swept = ListingKube(), ClusterView(), []
    kube.jobs, kube.pods = [job_body()], [api_pod(0, uid="p0"), api_pod(1, uid="p1")]

    async def scenario():
        sync = ViewSync(kube, view, None, lambda changed, gone: swept.append((changed, gone)))
        await asyncio.gather(sync.wait_synced(), sync.wait_synced())
        assert kube.lists == 2 and view.size() == (1, 2)
        for _ in range(3):
            sync.watched("pods", None)  # Kopf's own first listing, after ours: nothing new
        await asyncio.sleep(0.05)
        assert kube.lists == 2
        sync.watched("pods", "MODIFIED")
        kube.jobs, kube.pods = [], [api_pod(0, uid="p0")]  # while the watch was away: the job and a pod went
        for _ in range(5):
            sync.watched("pods", None)  # the watch relisted: every object again
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert kube.lists == 4  # one sweep for the burst
    assert view.size() == (0, 1)
    assert swept[-1] == ({("team-a", "demo")}, {("team-a", "demo")})
