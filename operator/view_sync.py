"""Keeps the watched view whole. The watches feed it event by event, but two moments need a listing of
their own: the start (no reconcile may decide on a view the pod watch has not filled yet: a running gang
would look vanished) and a watch that is relisted (after the API server restarted, or its history
expired), which reports what exists but not what was deleted meanwhile. Then one listing of the jobs and
one of the pods, for all jobs together, replace what the view holds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

from .kube import Kube
from .view import ClusterView, JobKey

log = logging.getLogger(__name__)

RELIST_SETTLE_SECONDS = 2.0  # a relisted watch delivers its listing as a burst of events: one sweep after it
RETRY_SECONDS = (1.0, 30.0)


class ViewSync:
    def __init__(self, kube: Kube, view: ClusterView, namespaces: Optional[list[str]],
                 on_sweep: Callable[[set[JobKey], set[JobKey]], None]):
        """namespaces: those the operator watches (None: all). on_sweep(changed, gone): the jobs whose pods
        changed, and the jobs that are gone, as the listing found them."""
        self.kube, self.view, self.namespaces, self.on_sweep = kube, view, namespaces, on_sweep
        self._synced: Optional[asyncio.Event] = None
        self._sweeping: Optional[asyncio.Task] = None
        self._again = False

    @property
    def synced(self) -> bool:
        return self._synced is not None and self._synced.is_set()

    async def wait_synced(self) -> None:
        """Return once the view has been filled by a listing (the first caller starts it)."""
        if self._synced is None:
            self._synced = asyncio.Event()
            self._start(settle=0.0)
        await self._synced.wait()

    def relisted(self) -> None:
        """A watch is relisting (an event of type None after the start): sweep once it has settled."""
        if not self.synced:
            return  # the first listing is still to come, or under way
        if self._sweeping is not None and not self._sweeping.done():
            self._again = True
            return
        self._start(settle=RELIST_SETTLE_SECONDS)

    def _start(self, settle: float) -> None:
        self._sweeping = asyncio.get_running_loop().create_task(self._sweep_until_done(settle), name="view sweep")

    async def _sweep_until_done(self, settle: float) -> None:
        failures = 0
        while True:
            await asyncio.sleep(settle)
            self._again = False
            try:
                changed, gone = await asyncio.to_thread(self._sweep)
            except Exception as exc:  # the API server is still away: the watches will relist again too
                failures += 1
                settle = min(RETRY_SECONDS[0] * 2 ** (failures - 1), RETRY_SECONDS[1])
                log.warning("listing jobs and pods failed (retry in %.0f s): %s", settle, exc)
                continue
            assert self._synced is not None
            self._synced.set()
            self.on_sweep(changed, gone)
            if not self._again:
                return
            settle, failures = RELIST_SETTLE_SECONDS, 0

    def _sweep(self) -> tuple[set[JobKey], set[JobKey]]:
        """In a thread: list the jobs first, so a job created after that listing is not taken for gone."""
        changed: set[JobKey] = set()
        gone: set[JobKey] = set()
        scopes: list[Optional[str]] = list(self.namespaces or []) or [None]
        for namespace in scopes:
            scope = {namespace} if namespace else None
            jobs, jobs_version = self.kube.list("LLMTrainingJob", namespace)
            pods, pods_version = self.kube.list("Pod", namespace)
            gone |= self.view.replace_jobs(jobs, jobs_version, scope)
            changed |= self.view.replace_pods(pods, pods_version, scope)
        job_count, pod_count = self.view.size()
        log.info("view filled from a listing: %d jobs, %d pods", job_count, pod_count)
        return changed, gone
