"""The reconciler against a fake API server: it creates, writes status before stopping pods, never adopts."""

from __future__ import annotations

import asyncio
import copy
from datetime import datetime, timezone

import pytest

from llm_operator.job_loop import JobLoops
from llm_operator.kube import ForeignChild
from llm_operator.reconcile import Reconciler
from llm_operator.render import RenderContext
from llm_operator.view import ClusterView

SINCE = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeKube:
    """Records what the reconciler does, in order; objects live in dicts like on a real API server, and every
    change reaches the view as the watches would bring it."""

    def __init__(self, body, view):
        self.body = body
        self.view = view
        self.objects = {}
        self.calls = []
        self.version = 100
        self._stamp(body)
        view.observe_job(body)

    def _stamp(self, obj):
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        obj["metadata"].setdefault("uid", f"uid-{self.version}")
        return obj

    def create_if_absent(self, obj):
        key = (obj["kind"], obj["metadata"]["name"])
        if key in self.objects:
            if self.objects[key]["metadata"]["ownerReferences"][0]["uid"] != obj["metadata"]["ownerReferences"][0]["uid"]:
                raise ForeignChild(key)
            return False, copy.deepcopy(self.objects[key])
        self.objects[key] = self._stamp(copy.deepcopy(obj))
        self.calls.append(("create", key))
        return True, copy.deepcopy(self.objects[key])

    def delete_pod(self, namespace, name):
        self.calls.append(("delete", name))
        pod = self.objects.pop(("Pod", name))
        self.view.observe_pod(pod, deleted=True)  # the watch's DELETED event
        return None

    def delete_job(self, namespace, name, uid):
        self.calls.append(("delete-job", name))

    def patch_job_status(self, namespace, name, patch):
        self.calls.append(("status", dict(patch)))
        status = dict(self.body.get("status") or {})
        status.update(patch)
        self.body["status"] = {k: v for k, v in status.items() if v is not None}
        return copy.deepcopy(self._stamp(self.body))

    def set_pod(self, name, **status):
        pod = self.objects[("Pod", name)]
        pod["status"] = status
        self.view.observe_pod(copy.deepcopy(self._stamp(pod)))  # the watch's MODIFIED event

    def pods(self):
        return [o for (kind, _), o in self.objects.items() if kind == "Pod"]


def make_reconciler(body):
    events, keys_made = [], []

    def keys():
        keys_made.append(1)
        return {"id_ed25519": f"key-{len(keys_made)}"}

    view = ClusterView()
    reconciler = Reconciler(kube=FakeKube(body, view), view=view, ctx=RenderContext(), emit=lambda b, e: events.append(e), generate_ssh_keys=keys)
    return reconciler, events, keys_made


def reconcile(reconciler, body, reported=None):
    return reconciler.reconcile(body, SINCE, reported)


RUNNING = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.0.0.1"}


def test_reconcile_is_idempotent(manifest):
    manifest["spec"]["launcher"] = {"mode": "ssh"}
    reconciler, events, keys_made = make_reconciler(manifest)
    reconcile(reconciler, manifest)
    created = dict(reconciler.kube.objects)
    assert sorted(created) == [("ConfigMap", "demo-config"), ("Pod", "demo-worker-0"), ("Pod", "demo-worker-1"), ("Secret", "demo-ssh"), ("Service", "demo")]
    assert manifest["status"]["phase"] == "Created"
    calls = len(reconciler.kube.calls)
    reconcile(reconciler, manifest)  # nothing changed: no new objects, no status write, no new keys
    assert len(reconciler.kube.calls) == calls and keys_made == [1]


def test_gang_restart_writes_status_before_stopping_pods_and_relabels_the_next_gang(manifest):
    reconciler, events, _ = make_reconciler(manifest)
    kube = reconciler.kube
    reconcile(reconciler, manifest)
    for name in ("demo-worker-0", "demo-worker-1"):
        kube.set_pod(name, **RUNNING)
    reconcile(reconciler, manifest)
    assert manifest["status"]["phase"] == "Running"
    kube.calls.clear()
    kube.set_pod("demo-worker-1", phase="Failed", containerStatuses=[{"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}])
    reconcile(reconciler, manifest)
    (first, *stops) = kube.calls
    assert first[0] == "status" and first[1]["phase"] == "Restarting" and first[1]["restarts"] == 1
    assert sorted(stops) == [("delete", "demo-worker-0"), ("delete", "demo-worker-1")]
    assert any(e.reason == "Restarting" for e in events)
    manifest["status"]["restartTime"] = "2000-01-01T00:00:00Z"  # backoff over
    reconcile(reconciler, manifest)
    pods = kube.pods()
    assert sorted(p["metadata"]["labels"]["llmtraining.dev/restart"] for p in pods) == ["1", "1"]
    assert manifest["status"]["phase"] == "Created" and "restartTime" not in manifest["status"]


def test_scrape_target_only_while_running(manifest):
    reconciler, _, _ = make_reconciler(manifest)
    assert reconcile(reconciler, manifest).scrape is None
    for name in ("demo-worker-0", "demo-worker-1"):
        reconciler.kube.set_pod(name, **RUNNING)
    outcome = reconcile(reconciler, manifest)
    assert outcome.scrape is not None and outcome.scrape.url == "http://10.0.0.1:9090/metrics"


def test_ttl_deletes_the_job(manifest):
    manifest["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 0}
    manifest["status"] = {"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z"}
    reconciler, _, _ = make_reconciler(manifest)
    reconcile(reconciler, manifest)
    assert ("delete-job", "demo") in reconciler.kube.calls


def test_reconcile_never_adopts_a_deleted_namesakes_children(manifest):
    reconciler, _, _ = make_reconciler(manifest)
    old = dict(manifest, metadata={**manifest["metadata"], "uid": "old-uid"})
    reconcile(reconciler, old)
    manifest.pop("status", None)
    with pytest.raises(ForeignChild):
        reconcile(reconciler, manifest)
    assert "status" not in manifest  # the old pods' state was not taken for the new job's


def test_reconcile_does_not_recreate_pods_of_a_finished_job(manifest):
    reconciler, _, _ = make_reconciler(manifest)
    manifest["status"] = {"phase": "Succeeded"}
    reconcile(reconciler, manifest)
    assert not [k for k in reconciler.kube.objects if k[0] == "Pod"]


def test_reconcile_reports_an_unrunnable_spec(manifest):
    manifest["spec"]["training"]["globalBatchSize"] = 33
    reconciler, events, _ = make_reconciler(manifest)
    reconcile(reconciler, manifest)
    assert manifest["status"]["phase"] == "Failed"
    (condition,) = manifest["status"]["conditions"]
    assert condition["reason"] == "InvalidSpec" and "globalBatchSize (33)" in condition["message"]
    assert reconciler.kube.objects == {}


# ------------------------------------------------------------------------------------------ job loop
class EmptyCluster:
    def list(self, kind, namespace=None):
        return [], "1"


class CountingReconciler:
    def __init__(self, fail_first=0):
        self.calls = 0
        self.fail_first = fail_first
        self.kube, self.view = EmptyCluster(), ClusterView()

    def reconcile_by_name(self, namespace, name, observed_since, reported):
        self.calls += 1
        if self.calls <= self.fail_first:
            raise ConnectionRefusedError("API server restarting")
        from llm_operator.lifecycle import Decision
        from llm_operator.reconcile import Outcome
        return Outcome(Decision(status={"phase": "Running", "restarts": 0}), None) if self.calls < 4 else None


def test_job_loop_coalesces_pokes_and_retries_failed_reconciles(monkeypatch):
    monkeypatch.setattr("llm_operator.job_loop.RETRY_SECONDS", (0.01, 0.05))

    async def scenario():
        reconciler = CountingReconciler(fail_first=2)
        loops = JobLoops(reconciler, progress_interval=0)
        task = asyncio.create_task(loops.run("ns", "job"))
        while reconciler.calls < 3:  # two failures retried by themselves, no event needed
            await asyncio.sleep(0.01)
        for _ in range(50):  # a burst of pod events …
            loops.poke("ns", "job")
        await asyncio.wait_for(task, timeout=5)  # … is one more reconcile, which finds the job gone
        return reconciler.calls

    assert asyncio.run(scenario()) == 4


def test_job_loop_task_per_job_stopped_on_delete():
    async def scenario():
        reconciler = CountingReconciler()
        loops = JobLoops(reconciler, progress_interval=0)
        loops.ensure_running("ns", "job")
        loops.ensure_running("ns", "job")  # one task per job, however many events
        assert len(loops._tasks) == 1
        task = loops._tasks[("ns", "job")]
        await asyncio.sleep(0.05)
        loops.stop("ns", "job")
        await asyncio.gather(task, return_exceptions=True)
        return task.cancelled(), loops._tasks

    cancelled, tasks = asyncio.run(scenario())
    assert cancelled and tasks == {}
