#!/usr/bin/env python3
"""What each kind of request the operator makes costs the API server, in CPU (its process and etcd's): the floor
under bench_operator.py's ratio on a machine where the API server and the operator share the cores.

  python benchmarks/bench_api_cost.py --count 300

On its own control plane (bench_operator.Cluster), as the operator's ServiceAccount, N requests of each kind, 16 in
flight, in this order: job creates (what a user's submission costs), ConfigMap creates (the operator's cheapest
child), pod creates, the two status patches of a job's start (Created, then Running, as lifecycle.py writes them)
and Events; the kube-apiserver's and etcd's CPU seconds over each batch ÷ N. No operator runs: the status patches
are written by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_operator import JOBS_NS, REPO, Cluster, client_for, in_parallel, job_manifest  # noqa: E402

from llm_operator.kube import Kube  # noqa: E402
from llm_operator.lifecycle import Event  # noqa: E402
from llm_operator.reconcile import WRITE_CONCURRENCY  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_of(state_dir: Path, name: str) -> int:
    return int((state_dir / "pids" / f"{name}.pid").read_text())


def status(phase: str, now: str) -> dict:
    conditions = [{"type": "Created", "status": "True", "reason": "PodsCreated", "message": "2/2 worker pods created",
                   "lastTransitionTime": now, "observedGeneration": 1}]
    if phase == "Running":
        conditions.append({"type": "Running", "status": "True", "reason": "AllPodsRunning", "message": "2/2 ranks running",
                           "lastTransitionTime": now, "observedGeneration": 1})
    return {"status": {"phase": phase, "conditions": conditions, "observedGeneration": 1, "restarts": 0}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--crds", type=Path, default=REPO / "crds", help="the CRD to install (a variant, to find what a write costs)")
    parser.add_argument("--cp-dir", type=Path, default=Path(os.environ.get("LLMTO_BENCH_CP_DIR", "/tmp/llmto-cp-bench")))
    args = parser.parse_args(argv)
    cluster = Cluster(args.cp_dir, nodes=4, pods=2 * args.count)
    cluster.script("down")
    cluster.script("up")
    try:
        operator = Kube(client_for(cluster.install(args.crds)))
        admin = Kube(client_for(cluster.kubeconfig))
        pids = {name: pid_of(args.cp_dir, name) for name in ("kube-apiserver", "etcd")}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        names = [f"job-{i}" for i in range(args.count)]
        jobs: dict[str, dict] = {}
        batches = {
            "create llmtrainingjobs": lambda name: jobs.__setitem__(name, admin.create(job_manifest(name, 2))),
            "create configmaps": lambda name: operator.create({"apiVersion": "v1", "kind": "ConfigMap",
                                                               "metadata": {"name": name, "namespace": JOBS_NS}, "data": {"job.yaml": "x" * 2000}}),
            "create pods": lambda name: operator.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": JOBS_NS},
                                                         "spec": {"containers": [{"name": "c", "image": "x"}]}}),
            "patch llmtrainingjobs/status (Created)": lambda name: operator.patch_job_status(JOBS_NS, name, status("Created", now)["status"]),
            "patch llmtrainingjobs/status (Running)": lambda name: operator.patch_job_status(JOBS_NS, name, status("Running", now)["status"]),
            "create events": lambda name: operator.post_event(jobs[name], Event("Normal", "Created", "2 worker pods created")),
        }
        result = {}
        for label, call in batches.items():
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.monotonic()
            in_parallel(call, names, WRITE_CONCURRENCY)
            wall = time.monotonic() - started
            spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
            result[label] = {"apiserver_ms": round(1000 * spent["kube-apiserver"] / args.count, 2),
                             "etcd_ms": round(1000 * spent["etcd"] / args.count, 2), "per_s": round(args.count / wall, 1)}
            print(f"{label:<42} kube-apiserver {result[label]['apiserver_ms']:6.2f} ms, etcd {result[label]['etcd_ms']:5.2f} ms a request; "
                  f"{result[label]['per_s']:.0f}/s")
        print(json.dumps({"count": args.count, "requests": result}))
    finally:
        cluster.script("down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
