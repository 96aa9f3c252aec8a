"""One asyncio task per job, on Kopf's event loop: it reconciles when the watched view of the job or its pods
changes (a watch event that changes nothing a decision reads wakes nobody), when a timer of the last
decision is due (restart backoff, deadline, TTL, stall), when rank 0's metrics change, and again with
backoff when a reconcile fails (the API server restarting, RBAC settling, a conflict): nothing is lost.
The watch events reach the view (view.py) here, on their way to the tasks.

A finished job whose decisions are done (compaction.py) ends its task and is compacted in the view; a timer
for its TTL, or a change of the job, starts a task again.

Everything for one job runs in its task, so reconciles of a job never overlap and a burst of pod events
coalesces into one reconcile. One job's failure never delays another's.

Why not a Kopf daemon or timer: Kopf 1.45 puts a finalizer on every object that has one, and a finalizer
makes each deletion wait for the operator (a job deleted while the operator is down never goes, a
namespace hangs in Terminating, and a job deleted and applied again at once is applied to the dying
object). The task is started from Kopf's watch of the jobs instead, and stopped by its DELETED event.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Callable, Optional

from .clock import utcnow
from .headroom import Headroom
from .kube import ForeignChild
from .progress import ScrapeTarget, fetch_metrics, parse_progress
from .reconcile import Reconciler
from .replica import Leadership
from .view import ClusterView
from .view_sync import ViewSync
from .writers import Writers

log = logging.getLogger(__name__)

JobKey = tuple[str, str]  # (namespace, name)
RESYNC_SECONDS = 600.0  # a reconcile at least this often, whatever was (not) seen
RETRY_SECONDS = (1.0, 60.0)  # after a failed reconcile: first delay, cap
RECONCILE_THREADS = 16  # reconciles at once; they mostly wait for the API server (writes: reconcile.WRITE_CONCURRENCY)
# A job's later reconciles (its pods came up, failed, ended) go before the first reconciles of jobs just created:
# those create gangs, and a burst of 1000 new jobs must not hold back the status of the jobs already running.
LATER, FIRST = 0, 1


class JobLoops:
    def __init__(self, reconciler: Reconciler, progress_interval: float, fetch: Callable[[str], str] = fetch_metrics,
                 namespaces: Optional[list[str]] = None, kueue: bool = False, leadership: Optional[Leadership] = None):
        """kueue: the jobs' Kueue Workloads are watched too (--kueue), so the view's listings include them.
        leadership: with leader election, the tasks reconcile only while this replica leads (a standby's tasks
        keep their view warm and wait); None: always."""
        self.leadership = leadership
        self.reconciler = reconciler
        self.view: ClusterView = reconciler.view
        self.sync = ViewSync(reconciler.kube, self.view, namespaces or None, self._swept, workloads=kueue)
        self.progress_interval = progress_interval
        self.fetch = fetch
        self._pokes: dict[JobKey, asyncio.Event] = {}
        self._tasks: dict[JobKey, asyncio.Task] = {}
        self._ttl_timers: dict[JobKey, asyncio.TimerHandle] = {}  # settled jobs: their TTL's wake-up
        self._threads = Writers(RECONCILE_THREADS, name="reconcile")
        self.headroom = Headroom(RECONCILE_THREADS)  # first reconciles (gang creation) wait while the loop is behind

    # ------------------------------------------------------------------------- watch events (event loop)
    def on_job(self, type_: Optional[str], body: dict[str, Any]) -> None:
        """Every job gets its task: at start-up (the initial listing) and when created. DELETED stops it."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if type_ == "DELETED":
            if self.view.forget_job(body):  # not if a namesake has taken its place meanwhile
                self.stop(namespace, name)
            return
        self.sync.watched("jobs", type_)
        changed = self.view.observe_job(body)
        if self.view.is_settled(namespace, name):
            return  # compacted, and unchanged (a change makes observe_job hold it whole again)
        self.ensure_running(namespace, name)
        if changed:
            self.poke(namespace, name)

    def on_pod(self, type_: Optional[str], pod: dict[str, Any]) -> None:
        self.sync.watched("pods", type_)
        job = self.view.observe_pod(pod, deleted=type_ == "DELETED")
        if job is not None:
            self.poke(*job)

    def on_workload(self, type_: Optional[str], workload: dict[str, Any]) -> None:
        self.sync.watched("workloads", type_)
        job = self.view.observe_workload(workload, deleted=type_ == "DELETED")
        if job is not None:
            self.poke(*job)

    def on_namespace(self, type_: Optional[str], namespace: dict[str, Any]) -> None:
        if self.view.observe_namespace(namespace, deleted=type_ == "DELETED"):
            for key in self.view.jobs_in(namespace["metadata"]["name"]):
                self.poke(*key)  # they find it terminating, and stop: the garbage collector takes it from here

    def _swept(self, changed: set[JobKey], gone: set[JobKey]) -> None:
        for key in gone:
            self.stop(*key)
        for key in changed:
            self.poke(*key)

    def ensure_running(self, namespace: str, name: str) -> None:
        """Start the job's task unless it runs. Call from the event loop (a Kopf handler)."""
        key = (namespace, name)
        running = self._tasks.get(key)
        if running is None or running.done():  # done: a task that has just settled its job, before its callback ran
            task = asyncio.get_running_loop().create_task(self.run(namespace, name), name=f"job {namespace}/{name}")
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._tasks.pop(key, None) if self._tasks.get(key) is done else None)

    def stop(self, namespace: str, name: str) -> None:
        timer = self._ttl_timers.pop((namespace, name), None)
        if timer is not None:
            timer.cancel()
        task = self._tasks.pop((namespace, name), None)
        if task is not None:
            task.cancel()

    async def stop_all(self) -> None:
        self.headroom.stop()
        for timer in self._ttl_timers.values():
            timer.cancel()
        self._ttl_timers.clear()
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def poke(self, namespace: str, name: str) -> None:
        """Something about the job changed: reconcile soon. Call from the event loop."""
        poke = self._pokes.get((namespace, name))
        if poke is not None:  # else no task runs (yet): it reconciles first thing when it starts
            poke.set()

    def _poke_event(self, key: JobKey) -> asyncio.Event:
        return self._pokes.setdefault(key, asyncio.Event())

    async def run(self, namespace: str, name: str) -> None:
        """Until the job is gone (or the task is cancelled: the job was deleted, the operator stops)."""
        key = (namespace, name)
        poke = self._poke_event(key)
        loop = asyncio.get_running_loop()
        observed_since = utcnow()
        reported: Optional[dict[str, Any]] = None
        target: Optional[ScrapeTarget] = None
        due = loop.time()  # when to reconcile next
        next_scrape = loop.time()
        failures = 0
        priority = FIRST
        try:
            await self.sync.wait_synced()
            if self.leadership is not None:
                await self.leadership.wait_leading()  # a standby's task waits here; a takeover reconciles at once
            while True:
                if loop.time() >= due or poke.is_set():
                    poke.clear()
                    try:
                        reconcile = functools.partial(self.reconciler.reconcile_by_name, namespace, name, observed_since, reported)
                        outcome = await self._reconcile(priority, reconcile)
                        if outcome is not None and outcome.finishing is not None:
                            await asyncio.wrap_future(outcome.finishing)
                    except Exception as exc:  # retried: whatever triggered this reconcile must not be lost
                        failures += 1
                        delay = min(RETRY_SECONDS[0] * 2 ** (failures - 1), RETRY_SECONDS[1])
                        level = logging.INFO if isinstance(exc, ForeignChild) else logging.WARNING
                        log.log(level, "reconcile of %s/%s failed (retry in %.0f s): %s", namespace, name, delay, exc, exc_info=level == logging.WARNING)
                        due = loop.time() + delay
                        continue
                    failures, priority = 0, LATER
                    if outcome is None:
                        return  # the job is gone
                    if outcome.settled and not poke.is_set() and self._settle(key, outcome.decision.wake_after):
                        return  # compacted: a timer (its TTL) or a change of the job starts a task again
                    target = outcome.scrape if self.progress_interval > 0 else None  # 0: progress reading is off
                    if target is None:
                        reported = None
                    wake = outcome.decision.wake_after
                    due = loop.time() + (wake if wake is not None else RESYNC_SECONDS)
                if target is not None and loop.time() >= next_scrape:
                    next_scrape = loop.time() + self.progress_interval
                    progress = await self._scrape(target)
                    if progress is not None and progress != reported:
                        reported = progress
                        due = loop.time()
                        continue
                wait_until = min(due, next_scrape) if target is not None else due
                try:
                    await asyncio.wait_for(poke.wait(), timeout=max(0.0, wait_until - loop.time()))
                except asyncio.TimeoutError:
                    pass
        finally:
            self._pokes.pop(key, None)

    async def _reconcile(self, priority: int, reconcile: Callable[[], Any]) -> Any:
        if priority != FIRST:
            return await asyncio.wrap_future(self._threads.submit(priority, reconcile))
        await self.headroom.acquire()
        try:
            return await asyncio.wrap_future(self._threads.submit(priority, reconcile))
        finally:
            self.headroom.release()

    def _settle(self, key: JobKey, wake_after: Optional[float]) -> bool:
        body = self.view.job(*key)
        if body is None or not self.view.settle(*key, body["metadata"].get("uid")):
            return False
        if wake_after is not None:
            self._ttl_timers[key] = asyncio.get_running_loop().call_later(wake_after, self._ttl_due, key)
        return True

    def _ttl_due(self, key: JobKey) -> None:
        self._ttl_timers.pop(key, None)
        self.ensure_running(*key)

    async def _scrape(self, target: ScrapeTarget) -> Optional[dict[str, Any]]:
        try:
            text = await asyncio.to_thread(self.fetch, target.url)
            progress = parse_progress(text)
        except (OSError, ValueError) as exc:  # not serving yet, restarting, or unreachable
            log.debug("no progress from %s: %s", target.url, exc)
            return None
        return {**progress, "podUid": target.pod_uid} if progress else None
