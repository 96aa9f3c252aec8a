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

from kubernetes.client.exceptions import ApiException

from .kube import Kube
from .view import ClusterView, JobKey

log = logging.getLogger(__name__)

RELIST_SETTLE_SECONDS = 2.0  # a relisted watch delivers its listing as a burst: sweep once it has been quiet this long
RELIST_SETTLE_MAX_SECONDS = 30.0
RETRY_SECONDS = (1.0, 30.0)


class ViewSync:
    def __init__(self, kube: Kube, view: ClusterView, namespaces: Optional[list[str]],
                 on_sweep: Callable[[set[JobKey], set[JobKey]], None], workloads: bool = False):
        """namespaces: those the operator watches (None: all). on_sweep(changed, gone): the jobs whose pods (or
        Kueue Workloads) changed, and the jobs that are gone, as the listing found them. workloads: list the jobs'
        Kueue Workloads too (--kueue)."""
        self.kube, self.view, self.namespaces, self.on_sweep, self.workloads = kube, view, namespaces, on_sweep, workloads
        self._synced: Optional[asyncio.Event] = None
        self._sweeping: Optional[asyncio.Task] = None
        self._streaming: set[str] = set()  # the watches past their first listing
        self._last_relisted = 0.0

    @property
    def synced(self) -> bool:
        return self._synced is not None and self._synced.is_set()

    async def wait_synced(self) -> None:
        """Return once the view has been filled by a listing (the first caller starts it)."""
        if self._synced is None:
            self._synced = asyncio.Event()
            self._sweeping = asyncio.get_running_loop().create_task(self._sweep_until_done(), name="view sweep")
        await self._synced.wait()

    def watched(self, kind: str, type_: Optional[str]) -> None:
        """A watch event of this kind; type None is a listed object. Listed objects after the watch had streamed
        events are a relisting (Kopf's first listing, at start-up, is not): sweep once the burst has settled."""
        if type_ is not None:
            self._streaming.add(kind)
            return
        if kind not in self._streaming or not self.synced:
            return
        self._last_relisted = asyncio.get_running_loop().time()
        if self._sweeping is None or self._sweeping.done():
            self._sweeping = asyncio.get_running_loop().create_task(self._sweep_until_done(settle=True), name="view sweep")

    async def _sweep_until_done(self, settle: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if settle:
            started = loop.time()
            while (quiet := self._last_relisted + RELIST_SETTLE_SECONDS - loop.time()) > 0 and loop.time() - started < RELIST_SETTLE_MAX_SECONDS:
                await asyncio.sleep(quiet)
        failures = 0
        while True:
            try:
                changed, gone = await asyncio.to_thread(self._sweep)
                break
            except Exception as exc:  # the API server is still away (the watches will relist again too)
                failures += 1
                delay = min(RETRY_SECONDS[0] * 2 ** (failures - 1), RETRY_SECONDS[1])
                log.warning("listing jobs and pods failed (retry in %.0f s): %s", delay, exc)
                await asyncio.sleep(delay)
        assert self._synced is not None
        self._synced.set()
        self.on_sweep(changed, gone)

    def _sweep(self) -> tuple[set[JobKey], set[JobKey]]:
        """In a thread: list the jobs first, so a job created after that listing is not taken for gone."""
        changed: set[JobKey] = set()
        gone: set[JobKey] = set()
        scopes: list[Optional[str]] = list(self.namespaces or []) or [None]
        for namespace in scopes:
            scope = {namespace} if namespace else None
            jobs = self.kube.list("LLMTrainingJob", namespace)
            gone |= self.view.replace_jobs(jobs, jobs.resource_version, scope)
            pods = self.kube.list("Pod", namespace)
            changed |= self.view.replace_pods(pods, pods.resource_version, scope)
            if self.workloads:
                changed |= self._sweep_workloads(namespace, scope)
        job_count, pod_count = self.view.size()
        log.info("view filled from a listing: %d jobs, %d pods", job_count, pod_count)
        return changed, gone

    def _sweep_workloads(self, namespace: Optional[str], scope: Optional[set[str]]) -> set[JobKey]:
        try:
            workloads = self.kube.list("Workload", namespace)
        except ApiException as exc:
            if exc.status == 404:  # Kueue's CRDs are not installed (yet): no Workload to know of
                return set()
            raise
        return self.view.replace_workloads(workloads, workloads.resource_version, scope)
