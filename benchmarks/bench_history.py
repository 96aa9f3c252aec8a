#!/usr/bin/env python3
"""What N finished jobs cost the operator's memory until their TTL fires, in one process, no cluster needed.

  python benchmarks/bench_history.py --jobs 2000
  python benchmarks/bench_history.py --jobs 2000 --keep-all   # as before issue 22: nothing compacted

Each job is shaped as the API server sends it (managedFields, kubectl's last-applied annotation, a status the
operator wrote for its end), with M worker pods that exited 0 (the pods the operator renders, with the
fields the kubelet adds). Everything goes the operator's way: Kopf's per-object memory is recalled for each
object as Kopf's processing does (kopf_memory.EventOnlyMemories, or Kopf's own ResourceMemories with
--keep-all), the watch events reach JobLoops, the view is filled by its listing, and every job's task
reconciles it with the real Reconciler (against an in-memory API that serves the listing and the status
writes). Once every job has been reconciled and settled (or, with --keep-all, is waiting for its TTL), the
memory still held is read: tracemalloc's total (Python objects) and the RSS.

Printed: one JSON line; bytes_per_job is tracemalloc's growth ÷ N (the figure that scales: N finished jobs cost
N × bytes_per_job on top of the operator's idle RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import resource
import sys
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_operator import job_manifest  # noqa: E402

from kopf._core.reactor.inventory import ResourceMemories  # noqa: E402

from llm_operator.api import parse_job  # noqa: E402
from llm_operator.job_loop import JobLoops  # noqa: E402
from llm_operator.kopf_memory import EventOnlyMemories  # noqa: E402
from llm_operator.lifecycle import decide, status_patch  # noqa: E402
from llm_operator.reconcile import Reconciler  # noqa: E402
from llm_operator.render import RenderContext, render_children  # noqa: E402
from llm_operator.view import ClusterView, slim_pod  # noqa: E402

NOW = "2026-12-01T10:00:00Z"


class InMemoryApi:
    """The listing the view is filled from, and the status writes (merged into the job it holds)."""

    def __init__(self, jobs: dict, pods: list):
        self.jobs, self.pods, self.version = jobs, pods, 10**6

    def list(self, kind, namespace=None):
        if kind == "LLMTrainingJob":
            return list(self.jobs.values()), str(self.version)
        return (self.pods if kind == "Pod" else []), str(self.version)

    def patch_job_status(self, namespace, name, patch):
        body = self.jobs[(namespace, name)]
        status = {**body["status"], **patch}
        self.version += 1
        body["status"] = {k: v for k, v in status.items() if v is not None}
        body["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(body)

    def get_job(self, namespace, name):
        return copy.deepcopy(self.jobs.get((namespace, name)))


def api_fields(obj: dict, version: int) -> dict:
    meta = obj["metadata"]
    meta.update(uid=f"00000000-0000-0000-0000-{version:012d}", resourceVersion=str(version), creationTimestamp=NOW,
                managedFields=[{"manager": "kubectl", "operation": "Update", "apiVersion": "v1", "time": NOW, "fieldsType": "FieldsV1",
                                "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {}}}])
    return obj


def finished_job(i: int, workers: int) -> tuple[dict, list[dict]]:
    body = api_fields(job_manifest(f"job-{i}", workers), 10 * i + 1)
    body["metadata"]["generation"] = 1
    body["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": json.dumps(job_manifest(f"job-{i}", workers))}
    body["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 86400}
    job = parse_job(body)
    pods = []
    for n, child in enumerate(c for c in render_children(job, RenderContext()) if c["kind"] == "Pod"):
        pod = api_fields(child, 10 * i + 2 + n)
        pod["metadata"]["ownerReferences"][0]["uid"] = body["metadata"]["uid"]
        pod["spec"]["nodeName"] = f"node-{n}"
        pod["status"] = {"phase": "Succeeded", "podIP": f"10.0.{i % 250}.{n}", "hostIP": "10.1.0.1", "startTime": NOW, "qosClass": "Burstable",
                         "conditions": [{"type": t, "status": "False" if t in ("Ready", "ContainersReady") else "True", "lastTransitionTime": NOW}
                                        for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")],
                         "containerStatuses": [{"name": "trainer", "ready": False, "restartCount": 0, "image": "trainer", "imageID": "sha256:0",
                                                "containerID": "containerd://0", "started": False,
                                                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": NOW, "finishedAt": NOW}}}]}
        pods.append(pod)
    status: dict = {}
    for _ in range(4):  # the status the operator wrote along the way, to its end
        now = datetime.now(timezone.utc)
        decided = decide(job, 1, [slim_pod(p) for p in pods], status, now, observed_since=now).status
        if not status_patch(status, decided):
            break
        status = decided
    body["status"] = status
    return body, pods


async def run(args) -> dict:
    jobs, pods = {}, []
    for i in range(args.jobs):
        body, job_pods = finished_job(i, args.workers)
        jobs[("bench-jobs", body["metadata"]["name"])] = body
        pods += job_pods
    api = InMemoryApi(jobs, pods)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    memories = ResourceMemories() if args.keep_all else EventOnlyMemories()
    view = ClusterView()
    if args.keep_all:
        view.settle = lambda *a, **k: False  # type: ignore[method-assign]
    reconciler = Reconciler(kube=api, view=view, ctx=RenderContext(), emit=lambda body, event: None, generate_ssh_keys=dict)  # type: ignore[arg-type]
    reconciled: set = set()
    reconcile = reconciler.reconcile_by_name

    def counting(namespace, name, *a):
        outcome = reconcile(namespace, name, *a)
        reconciled.add((namespace, name))
        return outcome

    reconciler.reconcile_by_name = counting  # type: ignore[method-assign]
    loops = JobLoops(reconciler, progress_interval=0)
    for body in jobs.values():  # Kopf's first listing: each object's memory recalled, then the handler
        event = copy.deepcopy(body)
        await memories.recall(event, noticed_by_listing=True)
        loops.on_job(None, event)
    for pod in pods:
        event = copy.deepcopy(pod)
        await memories.recall(event, noticed_by_listing=True)
        loops.on_pod(None, event)
    started = time.monotonic()
    while len(reconciled) < args.jobs or (not args.keep_all and loops._tasks):
        await asyncio.sleep(0.2)
        if time.monotonic() - started > 600:
            raise TimeoutError(f"{len(reconciled)} of {args.jobs} jobs reconciled")
    await asyncio.sleep(0.5)
    del event
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    result = {"jobs": args.jobs, "workers": args.workers, "compaction": not args.keep_all, "settled": view.settled_count(),
              "tasks": len(loops._tasks), "kopf_memories": sum(1 for _ in memories.iter_all_memories()),
              "bytes_per_job": round(held / args.jobs), "held_mib": round(held / 2**20, 1),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "rss_before_mib": round(rss_before / 1024, 1)}
    await loops.stop_all()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep-all", action="store_true", help="as before issue 22: no compaction, Kopf's own per-object memory")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
