#!/usr/bin/env python3
"""How long the operator goes without a leader: the takeover after the leader is SIGKILLed (a crash, an OOM
kill: the standby waits for the Lease to expire) and the hand-over after SIGTERM (a rolling update, a drain:
the leader releases the Lease), each the median of --runs.

  python benchmarks/bench_leader_election.py --runs 5 --jobs 20 --workers 4

It starts its own control plane (hack/controlplane.sh, its own LLMTO_CP_DIR), the operator's ServiceAccount
bound to the chart's rules (leader-election Role included), and --jobs jobs for the replicas' views to hold.
Each run: replica A leads, replica B is ready (/readyz: its view warm); SIGKILL A, then the time until B holds
the Lease; replica C ready, SIGTERM B, then the time until C holds it; C is stopped (SIGTERM) before the next
run. The Lease is read every 0.1 s as the admin (the figures are that coarse). Printed: a table, then one JSON
line. controller-runtime's bounds, for comparison: after a crash, the lease duration (15 s) plus a retry
period (2 s); after a release, a retry period.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apiwatch import wait_until  # noqa: E402
from bench_operator import JOBS_NS, OPERATOR_NS, OPERATOR_SA, RULES, Cluster, job_manifest  # noqa: E402

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LEASE = "llm-training-operator"


class Replica:
    def __init__(self, name: str, kubeconfig: Path, log_dir: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.name = name
        self.log = open(log_dir / f"{name}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llm_operator.cli", "run", f"--namespace={JOBS_NS}", "--health-port", str(self.port),
             "--metrics-port", "0", "--log-format", "plain"],
            env={**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": name, "POD_NAMESPACE": OPERATOR_NS},
            stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log: {self.log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def end(self, sig: str = "TERM") -> None:
        if self.proc.poll() is None:
            (self.proc.terminate if sig == "TERM" else self.proc.kill)()
        self.proc.wait(30)
        self.log.close()


def holder(cluster: Cluster) -> str:
    try:
        return cluster.kubectl("-n", OPERATOR_NS, "get", "lease", LEASE, "-o", "jsonpath={.spec.holderIdentity}").strip()
    except subprocess.CalledProcessError:
        return ""


def seconds_until_held(cluster: Cluster, replica: Replica, since: float, timeout: float = 60) -> float:
    wait_until(lambda: holder(cluster).startswith(replica.name + "_"), timeout, f"{replica.name} holding the Lease", interval=0.1)
    return time.monotonic() - since


def one_run(cluster: Cluster, kubeconfig: Path, log_dir: Path, run: int) -> dict:
    a = Replica(f"r{run}-a", kubeconfig, log_dir)
    seconds_until_held(cluster, a, time.monotonic())
    b = Replica(f"r{run}-b", kubeconfig, log_dir)
    wait_until(b.ready, 60, "replica b ready", interval=0.2)
    killed = time.monotonic()
    a.end("KILL")
    sigkill_s = seconds_until_held(cluster, b, killed)
    c = Replica(f"r{run}-c", kubeconfig, log_dir)
    wait_until(c.ready, 60, "replica c ready", interval=0.2)
    terminated = time.monotonic()
    b.proc.terminate()
    sigterm_s = seconds_until_held(cluster, c, terminated)
    b.end()
    c.end()
    return {"sigkill_s": round(sigkill_s, 2), "sigterm_s": round(sigterm_s, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=20, help="jobs the replicas' views hold")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--cp-dir", type=Path, default=Path(os.environ.get("LLMTO_BENCH_CP_DIR", "/tmp/llmto-cp-bench-le")))
    parser.add_argument("--keep", action="store_true", help="leave the control plane running")
    args = parser.parse_args(argv)

    cluster = Cluster(args.cp_dir, nodes=3, pods=args.jobs * args.workers)
    cluster.script("down")
    cluster.script("up")
    try:
        kubeconfig = cluster.install()
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "leader-election", "namespace": OPERATOR_NS},
                "rules": yaml.safe_load(RULES.read_text())["leaderElection"]}
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "leader-election", "namespace": OPERATOR_NS},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leader-election"},
                   "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]}
        jobs = [job_manifest(f"job-{i:03d}", args.workers) for i in range(args.jobs)]
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [role, binding, *jobs]}))
        runs = [one_run(cluster, kubeconfig, args.cp_dir, run) for run in range(args.runs)]
    finally:
        if not args.keep:
            cluster.script("down")
    result = {"runs": runs, "sigkill_median_s": statistics.median(r["sigkill_s"] for r in runs),
              "sigterm_median_s": statistics.median(r["sigterm_s"] for r in runs), "lease_s": 15, "retry_s": 2}
    print(f"{'run':>4} {'after SIGKILL (s)':>18} {'after SIGTERM (s)':>18}")
    for i, r in enumerate(runs):
        print(f"{i:>4} {r['sigkill_s']:>18.2f} {r['sigterm_s']:>18.2f}")
    print(f"{'med':>4} {result['sigkill_median_s']:>18.2f} {result['sigterm_median_s']:>18.2f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
