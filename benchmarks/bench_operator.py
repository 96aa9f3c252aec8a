#!/usr/bin/env python3
"""The operator at scale, against the plain pod-create ceiling of the same API server, in one run.

  python benchmarks/bench_operator.py --jobs 200 --workers 8
  python benchmarks/bench_operator.py --jobs 1000 --workers 2

It starts its own control plane (hack/controlplane.sh with its own LLMTO_CP_DIR, kwok nodes sized for the pods,
the API server's audit log on), installs the CRD and the operator's ServiceAccount bound to the chart's RBAC
rules, then:

1. raw: N jobs are created with no operator running, their N×M worker pods rendered exactly as the operator
   renders them, and created by a plain loop as that ServiceAccount, with the operator's write concurrency
   (reconcile.WRITE_CONCURRENCY threads) and the operator's client code (Kube.create); the time until a watch
   has seen every pod. The namespace is then deleted (and waited for).
2. operator: `llm-operator run` under that ServiceAccount; the N jobs are applied at once (same concurrency);
   the time until a watch has seen every pod, and when each job and pod first showed Running.
   With --cpu-millicores M the operator runs in a cgroup with a CPU quota of M/1000 of a core (the chart
   requests 100m and sets no limit: on a busy node that is about what it gets).
3. no-op events: every pod is labelled (a change no decision reads); the operator's requests meanwhile.
4. with --finish: every pod exits 0 (kwok's exit-code annotation), every job is Succeeded, and after the
   quiet window the operator's RSS is read: what N finished jobs kept for their TTL cost.

The raw loop is timed three ways. Fair (raw_s, the baseline of operator_over_raw): timed from the jobs'
submission as the operator phase is, the jobs created as there (16 threads) and, as soon as a job's create
returns, every write of its first reconcile: every object the operator creates for a job (ConfigMap, Service,
the gang's Workload and PodGroup where those APIs are served, the pods), in the operator's order (what the pods
mount first, then the group, then the pods), then the status lifecycle.decide gives (phase Created) and its
Events; 16 jobs at once and 16 writes in flight, as the operator's reconcile and writer threads do. A job's
status write costs the API server 5 times a pod's create (benchmarks/bench_api_cost.py): a baseline without it
measures the API server, not the operator. Every child with the jobs made before the clock starts
(raw_children_s, the fair figure until 2026-12-08), and pods only (raw_pods_s, the first figure) are kept and
labelled. --runs K repeats the whole run on fresh control planes and prints the median of each figure.

Printed: a table, then one JSON line. operator_over_raw is operator time ÷ raw time (time until all pods
exist); running_lag_s is the p99 over jobs of (job Running − its last pod Running); requests_per_job counts
the operator's requests from its start until every job was Running (the audit log, the operator's
ServiceAccount only; watches and listings amortised over the jobs); rss_mib is the operator's peak RSS (the
whole run, no-op events included) and
cpu_s its CPU seconds from the jobs' creation until then.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable
from pathlib import Path

import yaml
from kubernetes import config as kube_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import statistics  # noqa: E402

from apiwatch import Timeline, Watch, count_requests, split_reads_writes, wait_until  # noqa: E402

from llm_operator.api import parse_job  # noqa: E402
from llm_operator.kube import Kube, path_of  # noqa: E402
from llm_operator.main import discover_gang_apis  # noqa: E402
from llm_operator.reconcile import WRITE_CONCURRENCY  # noqa: E402
from llm_operator.render import RenderContext, render_children  # noqa: E402
from llm_operator.clock import utcnow  # noqa: E402
from llm_operator.lifecycle import decide, status_patch  # noqa: E402
from llm_operator.render.gang import plan_gang  # noqa: E402
from llm_operator.view import slim_pod  # noqa: E402
from llm_operator.writers import CREATE, STATUS, Writers  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "hack" / "controlplane.sh"
RULES = REPO / "charts" / "llm-training-operator" / "files" / "rbac-rules.yaml"
OPERATOR_NS, OPERATOR_SA = "llm-operator-bench", "llm-training-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
RAW_NS, CHILDREN_NS, FAIR_NS, JOBS_NS = "bench-raw", "bench-children", "bench-fair", "bench-jobs"
EXIT_CODE_ANNOTATION = "kwok.llmtraining.dev/exit-code"  # hack/controlplane.sh: kwok ends the pod with this code


def job_manifest(name: str, workers: int, namespace: str = JOBS_NS) -> dict:
    return {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": name, "namespace": namespace},
            "spec": {"image": "ghcr.io/llmtraining/trainer:0.1.0", "nodes": workers, "slotsPerNode": 1,
                     "model": {"preset": "tiny"}, "training": {"steps": 10, "microBatchSize": 1}}}


class Cluster:
    def __init__(self, state_dir: Path, nodes: int, pods: int):
        per_node = math.ceil(pods / nodes)
        self.env = {**os.environ, "LLMTO_CP_DIR": str(state_dir), "LLMTO_CP_NODES": str(nodes), "LLMTO_CP_AUDIT": "1",
                    "LLMTO_CP_NODE_GPUS": str(per_node + 1), "LLMTO_CP_NODE_PODS": str(max(110, per_node + 10)),
                    "LLMTO_CP_ETCD_QUOTA_MB": "8192"}  # 10,000 × 2 passed the harness's 512 MiB: every write refused
        self.env.pop("KUBECONFIG", None)
        self.state_dir = state_dir
        self.kubeconfig = state_dir / "kubeconfig"
        self.audit_log = state_dir / "logs" / "audit.log"

    def script(self, command: str) -> None:
        subprocess.run(["bash", str(SCRIPT), command], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        bin_dir = subprocess.run(["bash", str(SCRIPT), "bin-dir"], env=self.env, capture_output=True, text=True, check=True).stdout.split()[-1]
        return subprocess.run([f"{bin_dir}/kubectl", f"--kubeconfig={self.kubeconfig}", *args], input=input, capture_output=True,
                              text=True, check=True, timeout=600).stdout

    def install(self, crds: Path = REPO / "crds") -> Path:
        """CRD, namespaces, the operator's ServiceAccount bound to the chart's rules; its kubeconfig."""
        self.kubectl("apply", "--server-side", "-f", str(crds))
        self.kubectl("wait", "--for=condition=Established", "crd/llmtrainingjobs.llmtraining.dev", "--timeout=60s")
        rules = yaml.safe_load(RULES.read_text())
        objects = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in (OPERATOR_NS, RAW_NS, CHILDREN_NS, FAIR_NS, JOBS_NS)]
        objects += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NS}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "llm-training-operator-bench"},
             "rules": rules["namespaced"] + rules["cluster"]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "llm-training-operator-bench"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "llm-training-operator-bench"},
             "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]},
        ]
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        for ns in (RAW_NS, CHILDREN_NS, FAIR_NS, JOBS_NS):
            wait_until(lambda ns=ns: self._has_default_sa(ns), 60, f"default ServiceAccount in {ns}", interval=0.5)
        admin = yaml.safe_load(self.kubeconfig.read_text())
        token = self.kubectl("-n", OPERATOR_NS, "create", "token", OPERATOR_SA, "--duration=4h").strip()
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "operator",
                  "clusters": [{"name": "bench", "cluster": admin["clusters"][0]["cluster"]}],
                  "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
                  "contexts": [{"name": "operator", "context": {"cluster": "bench", "user": OPERATOR_SA}}]}
        path = self.state_dir / "operator.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path

    def _has_default_sa(self, namespace: str) -> bool:
        try:
            self.kubectl("-n", namespace, "get", "serviceaccount", "default")
            return True
        except subprocess.CalledProcessError:
            return False


def client_for(kubeconfig: Path):
    """An ApiClient with enough pooled connections for the concurrency."""
    from kubernetes import client

    configuration = client.Configuration()
    kube_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = 4 * WRITE_CONCURRENCY
    return client.ApiClient(configuration)


def in_parallel(call, items, workers: int) -> list:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(call, items))


def watch_namespace(kube: Kube, namespace: str, timeline: Timeline) -> list[Watch]:
    watches = [Watch(kube, path_of("Pod", namespace), timeline.on_pod), Watch(kube, path_of("LLMTrainingJob", namespace), timeline.on_job)]
    for watch in watches:
        watch.start()
        watch.started_ok.wait(30)
    return watches


def raw_jobs(admin: Kube, namespace: str, args) -> list[dict]:
    return in_parallel(lambda i: admin.create(job_manifest(f"job-{i}", args.workers, namespace)), range(args.jobs), args.concurrency)


def timed_pods(admin: Kube, namespace: str, pods: int, create) -> float:
    timeline = Timeline()
    watches = watch_namespace(admin, namespace, timeline)
    started = time.monotonic()
    create()
    done = wait_until(lambda: len(timeline.pods_seen) >= pods, 600, f"the pods in {namespace}")
    for watch in watches:
        watch.stop()
    return done - started


def raw_pods_phase(admin: Kube, operator_identity: Kube, args) -> float:
    """Only the rendered pods of N jobs, created by a plain loop; seconds until a watch saw them all."""
    pods = [child for body in raw_jobs(admin, RAW_NS, args) for child in render_children(parse_job(body), RenderContext()) if child["kind"] == "Pod"]
    return timed_pods(admin, RAW_NS, len(pods), lambda: in_parallel(operator_identity.create, pods, args.concurrency))


def gang_creator(operator_identity: Kube, writers: Writers, ctx: RenderContext, first_status: bool = False) -> tuple[Callable[[dict], None], list[Future]]:
    """create_gang(job body): the job's children, in the operator's order (what the pods mount first, then the group,
    then the pods), each batch's writes in flight at once on `writers`, as Reconciler._create_gang. first_status: then
    the rest of the job's first reconcile, as the operator writes it: the status lifecycle.decide gives with those pods
    (phase Created and its conditions) and the decision's Events, first in line (writers.STATUS), not waited for (the
    operator's reconcile thread goes on to another job meanwhile): their futures are the list returned beside it."""
    finishing: list[Future] = []

    def create_gang(body: dict) -> None:
        job = parse_job(body)
        children = render_children(job, ctx)
        pods = []
        for kinds in ({"ConfigMap", "Service", "Secret", "Workload"}, {"PodGroup"}, {"Pod"}):
            for future in [writers.submit(CREATE, operator_identity.create, c) for c in children if c["kind"] in kinds]:
                created = future.result()
                if created["kind"] == "Pod":
                    pods.append(slim_pod(created))
        if first_status:
            meta = body["metadata"]
            decision = decide(job, meta.get("generation"), pods, {}, utcnow(), observed_since=utcnow(), gang_plan=plan_gang(job, ctx))
            patch = status_patch({}, decision.status)
            finishing.append(writers.submit(STATUS, lambda: [operator_identity.patch_job_status(meta["namespace"], meta["name"], patch),
                                                             *(operator_identity.post_event(body, event) for event in decision.events)]))

    return create_gang, finishing


def raw_children_phase(admin: Kube, operator_identity: Kube, args) -> float:
    """Every object the operator creates per job, for jobs created before the clock starts; 16 jobs at once over 16
    writers."""
    create_gang, _ = gang_creator(operator_identity, Writers(args.concurrency, name="raw-write"),
                                  RenderContext(gang_apis=discover_gang_apis(operator_identity)))
    jobs = raw_jobs(admin, CHILDREN_NS, args)
    return timed_pods(admin, CHILDREN_NS, args.jobs * args.workers, lambda: in_parallel(create_gang, jobs, args.concurrency))


def raw_fair_phase(admin: Kube, operator_identity: Kube, args) -> float:
    """From the jobs' submission, as the operator phase is timed: the jobs are created as there (16 threads), and each
    job's first reconcile's writes (its children, its Created status, its Events) as soon as its create returns: a
    controller that needs no watch. 16 jobs at once over 16 writers."""
    create_gang, finishing = gang_creator(operator_identity, Writers(args.concurrency, name="raw-write"),
                                          RenderContext(gang_apis=discover_gang_apis(operator_identity)), first_status=True)

    def submit_and_create() -> None:
        with ThreadPoolExecutor(args.concurrency, thread_name_prefix="raw-gang") as gangs:
            gangs_created = in_parallel(lambda i: gangs.submit(create_gang, admin.create(job_manifest(f"job-{i}", args.workers, FAIR_NS))),
                                        range(args.jobs), args.concurrency)
            for future in gangs_created + finishing:
                future.result()

    return timed_pods(admin, FAIR_NS, args.jobs * args.workers, submit_and_create)


def proc_stats(pid: int) -> dict:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {"rss_mib": int(status["VmRSS"].split()[0]) / 1024, "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024,
            "cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")}


def cpu_cgroup(millicores: int) -> Path:
    """A cgroup whose CPU quota is millicores/1000 of a core: cgroup v2 (cpu.max) or v1's cpu controller."""
    period = 100_000
    quota = millicores * period // 1000
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists():
        path = Path(f"/sys/fs/cgroup/llmto-bench-{os.getpid()}")
        path.mkdir(exist_ok=True)
        (path / "cpu.max").write_text(f"{quota} {period}")
    else:
        path = Path(f"/sys/fs/cgroup/cpu/llmto-bench-{os.getpid()}")
        path.mkdir(exist_ok=True)
        (path / "cpu.cfs_period_us").write_text(str(period))
        (path / "cpu.cfs_quota_us").write_text(str(quota))
    return path


def start_operator(kubeconfig: Path, log_path: Path, cgroup: Path | None = None, profile: Path | None = None) -> subprocess.Popen:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sampler = [str(Path(__file__).resolve().parent / "sampling.py"), str(profile)] if profile else []
    proc = subprocess.Popen([sys.executable, *sampler, "-m", "llm_operator.cli", "run", "--all-namespaces", "--health-port", str(port),
                             "--metrics-port", "0", "--log-format", "plain",
                             "--no-leader-election"],  # one operator's requests: no Lease renewals among them
                            env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=REPO,
                            preexec_fn=(lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid()))) if cgroup else None)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited with {proc.returncode}; log: {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    wait_until(healthy, 60, "the operator's liveness endpoint", interval=0.2)
    return proc


def stop_operator(operator: subprocess.Popen) -> None:
    if operator.poll() is not None:
        return
    operator.send_signal(signal.SIGTERM)
    try:
        operator.wait(30)
    except subprocess.TimeoutExpired:
        operator.kill()


def quiet_cpu(pid: int, seconds: float = 2.0) -> bool:
    """The process used under 5% of a core for `seconds`: its start-up reconciles are done."""
    before = proc_stats(pid)["cpu_s"]
    time.sleep(seconds)
    return proc_stats(pid)["cpu_s"] - before < 0.05 * seconds


def operator_phase(cluster: Cluster, admin: Kube, kubeconfig: Path, args) -> dict:
    timeline = Timeline()
    watches = watch_namespace(admin, JOBS_NS, timeline)
    wall_start = time.time()
    cgroup = cpu_cgroup(args.cpu_millicores) if args.cpu_millicores else None
    operator = start_operator(kubeconfig, args.log, cgroup, args.profile)
    load_before = os.getloadavg()[0]
    idle = proc_stats(operator.pid)
    # 2 s a job, 900 s at least: at the chart's 100m, 1000 × 2 took 631 to 920 s to bring every pod up on the dev VM
    patience = max(900.0, 2.0 * args.jobs)
    try:
        pods = args.jobs * args.workers
        started, wall_jobs = time.monotonic(), time.time()
        in_parallel(lambda i: admin.create(job_manifest(f"job-{i}", args.workers)), range(args.jobs), args.concurrency)
        all_pods = wait_until(lambda: len(timeline.pods_seen) >= pods, patience, "the operator's pods")
        wall_all_pods = time.time()
        at_all_pods = proc_stats(operator.pid)
        all_running = wait_until(lambda: len(timeline.job_running) >= args.jobs, patience, "every job Running", interval=0.2)
        wall_running = time.time()
        at_running = proc_stats(operator.pid)

        time.sleep(args.settle)  # nothing happens: nothing should be asked
        wall_quiet = time.time()
        time.sleep(args.settle)
        wall_noop = time.time()
        patch = {"metadata": {"labels": {"bench.llmtraining.dev/touched": "yes"}}}
        names = sorted(timeline.pods_seen)
        in_parallel(lambda name: admin.request("PATCH", path_of("Pod", JOBS_NS, name), patch, content_type="application/merge-patch+json"),
                    names, args.concurrency)
        time.sleep(args.settle)
        wall_end = time.time()
        final = proc_stats(operator.pid)
        finished = restarted = None
        if args.finish:
            done = {"metadata": {"annotations": {EXIT_CODE_ANNOTATION: "0"}}}
            in_parallel(lambda name: admin.request("PATCH", path_of("Pod", JOBS_NS, name), done, content_type="application/merge-patch+json"),
                        names, args.concurrency)
            wait_until(lambda: len(timeline.job_succeeded) >= args.jobs, patience, "every job Succeeded", interval=0.5)
            time.sleep(args.settle)
            finished = proc_stats(operator.pid)
            if args.restart:  # a fresh operator finds N finished jobs: what it keeps of them, without the running past
                stop_operator(operator)
                operator = start_operator(kubeconfig, args.log.with_suffix(".restarted.log"), cgroup)
                time.sleep(args.settle)
                wait_until(lambda: quiet_cpu(operator.pid), 600, "the restarted operator to go quiet", interval=0.5)
                restarted = proc_stats(operator.pid)
    finally:
        stop_operator(operator)
        for watch in watches:
            watch.stop()
        if cgroup is not None:
            cgroup.rmdir()
    load_after = os.getloadavg()[0]
    time.sleep(1.5)  # the audit log is written as requests complete

    lags = sorted(timeline.running_lags())
    to_running = count_requests(cluster.audit_log, OPERATOR_USER, wall_start, wall_running + 1.0, frozenset({RAW_NS}))
    return {
        "operator_s": all_pods - started, "all_running_s": all_running - started, "wall_jobs": wall_jobs, "lags": lags,
        "load": (load_before, load_after), "idle": idle, "at_all_pods": at_all_pods, "at_running": at_running, "final": final, "finished": finished, "restarted": restarted,
        "requests": to_running,
        "until_all_pods": count_requests(cluster.audit_log, OPERATOR_USER, wall_jobs, wall_all_pods),
        "quiet_requests": count_requests(cluster.audit_log, OPERATOR_USER, wall_quiet, wall_noop),
        "noop_requests": count_requests(cluster.audit_log, OPERATOR_USER, wall_noop, wall_end), "noop_events": len(names),
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def report(args, raws: dict[str, float], op: dict) -> dict:
    reads, writes = split_reads_writes(op["requests"])
    per_job = {key: round(n / args.jobs, 3) for key, n in sorted(op["requests"].items())}
    result = {
        "jobs": args.jobs, "workers": args.workers, "nodes": args.nodes, "concurrency": args.concurrency,
        "cpu_millicores": args.cpu_millicores, "load_avg_1m": [round(x, 1) for x in op["load"]],
        **{key: round(seconds, 2) for key, seconds in raws.items()}, "operator_s": round(op["operator_s"], 2),
        "operator_over_raw": round(op["operator_s"] / raws["raw_s"], 3),
        "operator_over_raw_pods": round(op["operator_s"] / raws["raw_pods_s"], 3),
        "operator_over_raw_children": round(op["operator_s"] / raws["raw_children_s"], 3),
        "all_running_s": round(op["all_running_s"], 2),
        "running_lag_s": round(percentile(op["lags"], 0.99), 3), "running_lag_p50_s": round(percentile(op["lags"], 0.5), 3),
        "running_lag_max_s": round(max(op["lags"], default=float("nan")), 3),
        "requests_per_job": {"total": round((reads + writes) / args.jobs, 3), "reads": round(reads / args.jobs, 3),
                             "writes": round(writes / args.jobs, 3), "by_verb_resource": per_job},
        "requests_while_quiet": sum(op["quiet_requests"].values()),
        "requests_for_noop_events": sum(op["noop_requests"].values()), "noop_events": op["noop_events"],
        "rss_mib": round(op["final"]["peak_rss_mib"], 1), "rss_idle_mib": round(op["idle"]["rss_mib"], 1),
        "rss_at_running_mib": round(op["at_running"]["rss_mib"], 1),
        "cpu_s": round(op["at_running"]["cpu_s"] - op["idle"]["cpu_s"], 2),
        "cpu_s_per_job": round((op["at_running"]["cpu_s"] - op["idle"]["cpu_s"]) / args.jobs, 4),
        "cpu_s_until_all_pods": round(op["at_all_pods"]["cpu_s"] - op["idle"]["cpu_s"], 2),
    }
    if op["finished"] is not None:
        result["rss_finished_mib"] = round(op["finished"]["rss_mib"], 1)
    if op["restarted"] is not None:
        result["rss_restarted_mib"] = round(op["restarted"]["rss_mib"], 1)
        result["rss_restarted_peak_mib"] = round(op["restarted"]["peak_rss_mib"], 1)
    rows = [
        ("pods (jobs × workers)", f"{args.jobs * args.workers} ({args.jobs} × {args.workers})"),
        ("write concurrency", str(args.concurrency)),
        ("operator CPU", f"{args.cpu_millicores}m (cgroup quota)" if args.cpu_millicores else "unlimited"),
        ("machine load (1 min) at start, end", "{:.1f}, {:.1f}".format(*op["load"])),
        ("raw loop, pods only: all pods exist", f"{result['raw_pods_s']:.2f} s"),
        ("raw loop, every child, jobs made first: all pods exist", f"{result['raw_children_s']:.2f} s"),
        ("raw loop, from the jobs' submission: all pods exist", f"{result['raw_s']:.2f} s  (the fair baseline)"),
        ("operator: all pods exist", f"{result['operator_s']:.2f} s  (× {result['operator_over_raw']:.2f} of the fair baseline, "
                                     f"× {result['operator_over_raw_children']:.2f} of every child, × {result['operator_over_raw_pods']:.2f} of pods only)"),
        ("operator: every job Running", f"{result['all_running_s']:.2f} s"),
        ("operator writes until all pods exist", ", ".join(f"{n} {key}" for key, n in sorted(op["until_all_pods"].items()) if key.split()[0] != "watch")),
        ("job Running − last pod Running", f"p50 {result['running_lag_p50_s']:.2f} s, p99 {result['running_lag_s']:.2f} s, max {result['running_lag_max_s']:.2f} s"),
        ("requests per job to Running", "{total:.2f} (reads {reads:.2f}, writes {writes:.2f})".format(**result["requests_per_job"])),
        *((f"  {key}", f"{n:.3f}") for key, n in per_job.items()),
        ("requests while quiet", f"{result['requests_while_quiet']} in {args.settle:.0f} s"),
        ("requests for no-op pod events", f"{result['requests_for_noop_events']} for {result['noop_events']} events"),
        ("operator RSS", f"idle {result['rss_idle_mib']:.0f} MiB, all Running {result['rss_at_running_mib']:.0f} MiB, peak {result['rss_mib']:.0f} MiB"),
        ("operator CPU to Running", f"{result['cpu_s']:.1f} s ({result['cpu_s_per_job'] * 1000:.1f} ms per job; "
                                    f"{result['cpu_s_until_all_pods']:.1f} s until all pods existed)"),
    ]
    if "rss_finished_mib" in result:
        rows.append(("operator RSS, every job Succeeded", f"{result['rss_finished_mib']:.0f} MiB"))
    if "rss_restarted_mib" in result:
        rows.append(("restarted operator RSS, N jobs Succeeded", f"{result['rss_restarted_mib']:.0f} MiB (peak {result['rss_restarted_peak_mib']:.0f} MiB)"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return result


def one_run(args) -> dict:
    cluster = Cluster(args.cp_dir, args.nodes, args.jobs * args.workers)
    cluster.script("down")  # a clean state: nothing left from an earlier run
    cluster.script("up")
    try:
        operator_kubeconfig = cluster.install()
        admin, operator_identity = Kube(client_for(cluster.kubeconfig)), Kube(client_for(operator_kubeconfig))
        raws = {"raw_pods_s": float("nan"), "raw_s": float("nan"), "raw_children_s": float("nan")}
        if not args.skip_raw:
            raws["raw_pods_s"] = raw_pods_phase(admin, operator_identity, args)
            raws["raw_s"] = raw_fair_phase(admin, operator_identity, args)
            raws["raw_children_s"] = raw_children_phase(admin, operator_identity, args)
        cluster.kubectl("delete", "namespace", RAW_NS, FAIR_NS, CHILDREN_NS, "--wait=true", "--timeout=600s")
        result = report(args, raws, operator_phase(cluster, admin, operator_kubeconfig, args))
        print(json.dumps(result), flush=True)
        return result
    finally:
        if not args.keep:
            cluster.script("down")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8, help="worker pods per job")
    parser.add_argument("--nodes", type=int, default=24, help="kwok nodes (each sized for its share of the pods)")
    parser.add_argument("--concurrency", type=int, default=WRITE_CONCURRENCY, help="writes in flight, raw loop and job submission")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of each quiet window after every job is Running")
    parser.add_argument("--cp-dir", type=Path, default=Path(os.environ.get("LLMTO_BENCH_CP_DIR", "/tmp/llmto-cp-bench")))
    parser.add_argument("--log", type=Path, default=Path("/tmp/llmto-bench-operator.log"), help="the operator's log")
    parser.add_argument("--keep", action="store_true", help="leave the control plane running")
    parser.add_argument("--cpu-millicores", type=int, default=0, help="the operator's CPU quota (100: the chart's request); 0: none")
    parser.add_argument("--finish", action="store_true", help="then end every job (pods exit 0) and report the RSS with them finished")
    parser.add_argument("--restart", action="store_true", help="with --finish: then a fresh operator finds the N finished jobs; its RSS")
    parser.add_argument("--profile", type=Path, help="run the operator under benchmarks/sampling.py, its samples written here")
    parser.add_argument("--skip-raw", action="store_true", help="no raw phases (profiling, memory): the ratios are not printed")
    parser.add_argument("--runs", type=int, default=1, help="whole runs on fresh control planes; the median of each figure is printed")
    args = parser.parse_args(argv)

    def terminated(*_):
        print("terminated (SIGTERM): stopping the operator and the control plane", file=sys.stderr)
        sys.exit(143)

    signal.signal(signal.SIGTERM, terminated)
    results = [one_run(args) for _ in range(args.runs)]
    if args.runs > 1:
        medians = {key: statistics.median(r[key] for r in results) for key, value in results[0].items()
                   if isinstance(value, (int, float)) and all(isinstance(r.get(key), (int, float)) for r in results)}
        print("median of", args.runs, "runs:", json.dumps(medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
