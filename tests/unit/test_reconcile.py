"""The reconciler against a fake API server: it creates, writes status before stopping pods, never adopts."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from datetime import datetime, timezone

import pytest

from llm_operator.job_loop import JobLoops
from llm_operator.kube import ForeignChild, Listing, NamespaceTerminating
from llm_operator.reconcile import Reconciler
from llm_operator.render import RenderContext
from llm_operator.view import ClusterView
from llm_operator.writers import CREATE, FINISH, STATUS, Writers, finish_priority

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


def make_reconciler(body, ctx=None):
    events, keys_made = [], []

    def keys():
        keys_made.append(1)
        return {"id_ed25519": f"key-{len(keys_made)}"}

    view = ClusterView()
    reconciler = Reconciler(kube=FakeKube(body, view), view=view, ctx=ctx or RenderContext(), emit=lambda b, e: events.append(e), generate_ssh_keys=keys)
    return reconciler, events, keys_made


def reconcile(reconciler, body, reported=None):
    outcome = reconciler.reconcile(body, SINCE, reported)
    if outcome.finishing is not None:
        outcome.finishing.result(timeout=10)  # as the job loop waits for it
    return outcome


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
    assert outcome.scrape is not None and outcome.scrape.url == "http://10.0.0.1:29600/metrics"


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
    failed, ready, stalled = manifest["status"]["conditions"]
    assert failed["reason"] == "InvalidSpec" and "globalBatchSize (33)" in failed["message"]
    assert (ready["type"], ready["status"]) == ("Ready", "False")
    assert (stalled["type"], stalled["status"], stalled["reason"]) == ("Stalled", "True", "InvalidSpec")  # kstatus: Failed
    assert reconciler.kube.objects == {}


# ------------------------------------------------------------------------------------------ job loop
class EmptyCluster:
    def list(self, kind, namespace=None):
        return Listing(lambda _: {"metadata": {"resourceVersion": "1"}, "items": []})


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


# ------------------------------------------------------------------------------------ requests, writers
def test_a_reconcile_that_changes_nothing_makes_no_request(manifest):
    reconciler, events, _ = make_reconciler(manifest)
    reconcile(reconciler, manifest)
    for name in ("demo-worker-0", "demo-worker-1"):
        reconciler.kube.set_pod(name, **RUNNING)
    reconcile(reconciler, manifest)
    calls, posted = len(reconciler.kube.calls), len(events)
    outcome = reconciler.reconcile_by_name("team-a", "demo", SINCE)  # reads the view, not the API server
    assert outcome.finishing is None and len(reconciler.kube.calls) == calls and len(events) == posted


def test_one_gang_from_creation_to_running_is_n_plus_six_writes(manifest):
    manifest["spec"].update(nodes=8, slotsPerNode=1, gang={"scheduler": "none"})  # the gang's objects are counted in test_gang
    manifest["spec"]["training"]["globalBatchSize"] = 16
    reconciler, events, _ = make_reconciler(manifest)
    kube = reconciler.kube
    reconcile(reconciler, manifest)
    for rank in range(8):  # pods come up one by one, each event a reconcile
        kube.set_pod(f"demo-worker-{rank}", **RUNNING)
        reconcile(reconciler, manifest)
    assert manifest["status"]["phase"] == "Running"
    writes = len(kube.calls) + len(events)
    assert writes == 8 + 6, (kube.calls, events)  # 8 pods, ConfigMap, Service, 2 status writes, 2 Events (created, running)


def test_a_change_of_only_the_ready_count_waits_a_moment(manifest, monkeypatch):
    monkeypatch.setattr("llm_operator.reconcile.COUNT_DELAY", 0.2)
    manifest["spec"].update(nodes=3, slotsPerNode=1)
    manifest["spec"]["training"]["globalBatchSize"] = 6
    reconciler, _, _ = make_reconciler(manifest)
    kube = reconciler.kube
    reconcile(reconciler, manifest)
    kube.calls.clear()
    kube.set_pod("demo-worker-0", **RUNNING)
    outcome = reconcile(reconciler, manifest)
    assert kube.calls == [] and 0 < outcome.decision.wake_after <= 0.2
    time.sleep(0.25)
    reconcile(reconciler, manifest)
    assert kube.calls == [("status", {"readyNodes": 1, "nodesReady": "1/3"})]


def test_a_job_in_a_terminating_namespace_is_left_alone(manifest):
    reconciler, events, _ = make_reconciler(manifest)
    reconciler.view.observe_namespace({"metadata": {"name": "team-a", "deletionTimestamp": "2026-01-01T00:00:00Z"}})
    assert reconciler.reconcile_by_name("team-a", "demo", SINCE) is None
    assert reconciler.kube.calls == [] and events == []


def test_a_create_refused_by_a_terminating_namespace_ends_the_reconcile_quietly(manifest):
    reconciler, events, _ = make_reconciler(manifest)

    def refuse(obj):
        raise NamespaceTerminating(obj["metadata"]["namespace"])

    reconciler.kube.create_if_absent = refuse
    assert reconciler.reconcile_by_name("team-a", "demo", SINCE) is None
    assert reconciler.view.is_terminating("team-a") and reconciler.kube.calls == [] and events == []


def test_writers_serve_gang_creation_before_status_and_events():
    writers, order, gate = Writers(1), [], threading.Event()
    writers.submit(CREATE, gate.wait)  # the only writer is busy
    later = [writers.submit(FINISH, order.append, "status"), writers.submit(CREATE, order.append, "pod-a"),
             writers.submit(CREATE, order.append, "pod-b")]
    gate.set()
    for future in later:
        future.result(timeout=5)
    assert order == ["pod-a", "pod-b", "status"]


def test_writers_serve_a_status_users_see_before_gang_creation():
    """Issue 22: a job whose gang came up is not written Running after every other job's gang is created."""
    writers, order, gate = Writers(1), [], threading.Event()
    writers.submit(CREATE, gate.wait)  # the only writer is busy
    later = [writers.submit(CREATE, order.append, "pod-a"), writers.submit(FINISH, order.append, "ready count"),
             writers.submit(STATUS, order.append, "phase Running"), writers.submit(CREATE, order.append, "pod-b")]
    gate.set()
    for future in later:
        future.result(timeout=5)
    assert order == ["phase Running", "pod-a", "pod-b", "ready count"]


@pytest.mark.parametrize("patch, lane", [
    ({"phase": "Running"}, STATUS),
    ({"conditions": [{"type": "Failed", "status": "True"}]}, STATUS),
    ({"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z", "readyNodes": 0}, STATUS),
    ({"readyNodes": 1}, FINISH),
    ({"progress": {"step": 3}}, FINISH),
    ({}, FINISH),  # Events or stopping pods only
])
def test_finish_priority(patch, lane):
    assert finish_priority(patch) == lane


class RecordingWriters(Writers):
    def __init__(self):
        super().__init__(4)
        self.priorities = []

    def submit(self, priority, call, *args):
        self.priorities.append(priority)
        return super().submit(priority, call, *args)


def test_a_new_gangs_status_is_written_in_the_status_lane(manifest):
    reconciler, _, _ = make_reconciler(manifest)
    reconciler.writers = RecordingWriters()
    reconcile(reconciler, manifest)
    assert set(reconciler.writers.priorities[:-1]) == {CREATE} and reconciler.writers.priorities[-1] == STATUS


def test_job_loop_runs_later_reconciles_before_the_first_reconciles_of_new_jobs(monkeypatch):
    """Issue 22: with every reconcile thread busy creating new jobs' gangs, a running job's next reconcile (its
    pods came up) goes first, not after the first reconciles of all the jobs created after it."""
    monkeypatch.setattr("llm_operator.job_loop.RECONCILE_THREADS", 1)
    gate, order = threading.Event(), []

    class GatedReconciler(CountingReconciler):
        def reconcile_by_name(self, namespace, name, observed_since, reported):
            order.append(name)
            if name == "busy":
                gate.wait(5)
            from llm_operator.lifecycle import Decision
            from llm_operator.reconcile import Outcome
            return Outcome(Decision(status={"phase": "Running", "restarts": 0}), None)

    async def until(condition):
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"not reached; order {order}")

    async def scenario():
        loops = JobLoops(GatedReconciler(), progress_interval=0)
        loops.ensure_running("ns", "running")
        await until(lambda: order == ["running"])
        loops.ensure_running("ns", "busy")  # the only thread is taken by a new job's gang creation …
        await until(lambda: order == ["running", "busy"])
        for name in ("new-1", "new-2"):  # … more new jobs queue behind it …
            loops.ensure_running("ns", name)
        await asyncio.sleep(0.05)
        loops.poke("ns", "running")  # … and then the running job's pods change
        await asyncio.sleep(0.05)
        gate.set()
        await until(lambda: len(order) == 5)
        await loops.stop_all()

    asyncio.run(scenario())
    assert order == ["running", "busy", "running", "new-1", "new-2"]


def test_only_event_handlers_are_registered():
    """main.EventHandlersOnlyDiffBase skips Kopf's diff base: right only while no handler detects changes."""
    import kopf

    import llm_operator.handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    assert registry._changing.get_all_handlers() == [] and registry._spawning.get_all_handlers() == []
    assert {h.id for h in registry._watching.get_all_handlers()} == {"job_event", "namespace_event"}  # pods: pod_watch.py


def test_job_loop_wakes_only_for_what_decisions_read(manifest):
    """Watch events go through the view: a pod event that changes nothing a decision reads costs no reconcile."""
    from test_view import ListingKube, api_pod, job_body

    async def scenario():
        reconciler = CountingReconciler()
        reconciler.kube = ListingKube()
        reconciler.kube.jobs, reconciler.kube.pods = [job_body()], [api_pod(0, version="5")]
        loops = JobLoops(reconciler, progress_interval=0)
        loops.on_job(None, job_body())
        loops.on_pod("ADDED", api_pod(0, version="5"))
        await asyncio.sleep(0.05)
        first = reconciler.calls
        touched = api_pod(0, version="6")
        touched["metadata"]["labels"]["team"] = "search"
        loops.on_pod("MODIFIED", touched)
        await asyncio.sleep(0.05)
        unchanged = reconciler.calls
        loops.on_pod("MODIFIED", api_pod(0, version="7", phase="Failed", exit_code=1))
        await asyncio.sleep(0.05)
        changed = reconciler.calls
        await loops.stop_all()
        return first, unchanged, changed

    first, unchanged, changed = asyncio.run(scenario())
    assert first == 1 and unchanged == 1 and changed == 2


def bind(kube, name, node):
    kube.objects[("Pod", name)]["spec"]["nodeName"] = node
    kube.set_pod(name, **RUNNING)


def test_placement_is_written_once_the_gang_is_bound_and_each_node_read_once(manifest):
    manifest["spec"]["gang"] = {"scheduler": "none", "topology": {"preferred": "example.com/block"}}
    reconciler, _, _ = make_reconciler(manifest)
    kube, reads = reconciler.kube, []
    kube.node_labels = lambda node: reads.append(node) or {"example.com/block": {"n0": "b1", "n1": "b2"}[node]}
    reconcile(reconciler, manifest)
    bind(kube, "demo-worker-0", "n0")
    reconcile(reconciler, manifest)
    assert "placement" not in manifest["status"]  # worker 1 is not bound yet
    bind(kube, "demo-worker-1", "n1")
    reconcile(reconciler, manifest)
    reconcile(reconciler, manifest)
    assert manifest["status"]["placement"] == "example.com/block: b1 (worker 0), b2 (worker 1)"
    assert reads == ["n0", "n1"]


def test_no_placement_and_no_failure_when_nodes_may_not_be_read(manifest):
    from kubernetes.client.exceptions import ApiException

    manifest["spec"]["gang"] = {"scheduler": "none", "topology": {"preferred": "example.com/block"}}
    reconciler, _, _ = make_reconciler(manifest)
    kube, reads = reconciler.kube, []

    def forbidden(node):
        reads.append(node)
        raise ApiException(status=403, reason="Forbidden")

    kube.node_labels = forbidden
    reconcile(reconciler, manifest)
    bind(kube, "demo-worker-0", "n0")
    bind(kube, "demo-worker-1", "n1")
    reconcile(reconciler, manifest)
    reconcile(reconciler, manifest)
    assert manifest["status"]["phase"] == "Running" and "placement" not in manifest["status"]
    assert reads == ["n0"]  # asked once, then no more
