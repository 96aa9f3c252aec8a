"""Two `llm-operator run` replicas behind the Lease, on the real control plane (kwok fakes the pods):

- one leads; the standby, its view warm (/readyz), writes nothing: the API server's audit log (each replica's
  User-Agent names it) holds no write of the standby's before it took over;
- SIGKILL of the leader amid a batch of 50 jobs × 4 workers: the standby takes the Lease once it expires, every
  job converges to Running with exactly one gang (one restart generation, one pod per rank, no pod twice, no pod
  left without its job), and a job whose worker failed during the gap is restarted;
- SIGTERM of the leader, as in a rolling update: it releases the Lease and a warm standby takes over within a
  retry period, and no job restarts or gets a pod twice because of it.

The hand-over times are printed, not asserted beyond what separates a release from an expiry (the benchmark
reports them: benchmarks/bench_leader_election.py)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml

from audit_trail import audit_writes, pod_creates, unix_time
from llm_operator.lease import LEASE_NAME, Timing
from llm_operator.render.names import JOB_NAME_LABEL, NODE_RANK_LABEL, RESTART_LABEL
from operator_harness import OPERATOR_NS, RULES_FILE, OperatorProcess, finish_pod, job_manifest, lease_holder

pytestmark = pytest.mark.e2e

LEASE_SECONDS = Timing().lease_seconds
JOBS, WORKERS = 50, 4


def acquired_wall(cp) -> float:
    """When the Lease's holder took it (spec.acquireTime, written by the holder itself): the bound for "wrote before it
    held the Lease", which the time the test saw the holder is not (the new leader writes between the two)."""
    stamp = cp.kubectl("-n", OPERATOR_NS, "get", "lease", LEASE_NAME, "-o", "jsonpath={.spec.acquireTime}").stdout.strip()
    return unix_time(stamp)


def wait_holder(cp, replica: OperatorProcess, timeout: float) -> float:
    """The monotonic time at which `replica` was seen holding the Lease."""
    cp.wait_for(lambda: lease_holder(cp, OPERATOR_NS).startswith(replica.name + "_"), timeout=timeout, interval=0.2,
                what=f"{replica.name} holding the Lease (log: {replica.log_path})")
    return time.monotonic()


def jobs_and_pods(cp, namespace) -> tuple[dict[str, dict], list[dict]]:
    jobs = {j["metadata"]["name"]: j for j in cp.get_json("ltj", "-n", namespace)["items"]}
    return jobs, cp.get_json("pods", "-n", namespace, "-l", JOB_NAME_LABEL)["items"]


def converged(cp, namespace):
    """Every job Running, its pods exactly one gang (one restart generation, WORKERS pods); None until then."""
    jobs, pods = jobs_and_pods(cp, namespace)
    if len(jobs) != JOBS or any(j.get("status", {}).get("phase") != "Running" for j in jobs.values()):
        return None
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    by_job: dict[str, list[dict]] = {}
    for pod in live:
        by_job.setdefault(pod["metadata"]["labels"][JOB_NAME_LABEL], []).append(pod)
    for name, job in jobs.items():
        gang = by_job.get(name, [])
        generations = {p["metadata"]["labels"].get(RESTART_LABEL) for p in gang}
        ranks = {p["metadata"]["labels"].get(NODE_RANK_LABEL) for p in gang}
        if len(gang) != WORKERS or len(ranks) != WORKERS or generations != {str(job["status"].get("restarts", 0))}:
            return None
    return jobs, live


@pytest.fixture
def replicas(control_plane, operator, namespace):
    """A factory of replicas watching `namespace`, under the operator's ServiceAccount with the chart's Lease Role.
    The session's single operator (no leader election) is stopped meanwhile: it would write too."""
    cp = control_plane
    rules = yaml.safe_load(RULES_FILE.read_text())["leaderElection"]
    cp.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "leader-election", "namespace": OPERATOR_NS},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "leader-election", "namespace": OPERATOR_NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leader-election"},
         "subjects": [{"kind": "ServiceAccount", "name": "llm-training-operator", "namespace": OPERATOR_NS}]},
    ])
    cp.kubectl("-n", OPERATOR_NS, "delete", "lease", LEASE_NAME, "--ignore-not-found")
    operator.stop()
    started: list[OperatorProcess] = []

    def start(name: str) -> OperatorProcess:
        replica = OperatorProcess(cp, operator.kubeconfig, operator.log_dir, name=name, leader_election=True, namespaces=(namespace,))
        replica.start()
        started.append(replica)
        return replica

    try:
        yield start
    finally:
        for replica in started:
            replica.stop()
        cp.kubectl("-n", OPERATOR_NS, "delete", "lease", LEASE_NAME, "--ignore-not-found", check=False)
        operator.start()


def test_two_replicas_one_writer_takeover_after_sigkill_and_hand_over_on_sigterm(control_plane, replicas, namespace):
    cp = control_plane
    a = replicas("replica-a")
    wait_holder(cp, a, timeout=30)
    b = replicas("replica-b")
    cp.wait_for(b.ready, timeout=60, what="replica-b ready as a warm standby")
    assert lease_holder(cp, OPERATOR_NS).startswith("replica-a_")

    # CPU workers (200 GPUs are more than the kwok nodes have); the kwok nodes' GPU taint tolerated
    manifests = [job_manifest(f"job-{i:02d}", nodes=WORKERS, slots=1, accelerator="cpu",
                              resources={"requests": {"cpu": "10m", "memory": "16Mi"}},
                              podTemplate={"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]})
                 for i in range(JOBS)]
    cp.apply(manifests, namespace=namespace)

    # SIGKILL the leader amid the batch: once some gangs exist, before all are running
    cp.wait_for(lambda: len(jobs_and_pods(cp, namespace)[1]) >= 2 * WORKERS, timeout=120, interval=0.2, what="the first gangs created")
    a.kill()
    killed_wall, killed = time.time(), time.monotonic()
    # a worker fails while no replica leads: the new leader must restart its gang
    running = cp.wait_for(lambda: next((p for p in jobs_and_pods(cp, namespace)[1] if p["status"].get("phase") == "Running"), None),
                          timeout=60, what="a running worker")
    failed_job = running["metadata"]["labels"][JOB_NAME_LABEL]
    finish_pod(cp, namespace, running["metadata"]["name"], 1)

    took_over = wait_holder(cp, b, timeout=LEASE_SECONDS + 20)
    took_over_wall = acquired_wall(cp)
    takeover_s = took_over - killed
    print(f"takeover after SIGKILL: {takeover_s:.1f} s (lease {LEASE_SECONDS} s)", file=sys.stderr)
    assert takeover_s <= LEASE_SECONDS + 10

    state = cp.wait_for(lambda: converged(cp, namespace), timeout=300, interval=1,
                        what=f"all {JOBS} jobs running, one gang each (log: {b.log_path})")
    jobs, pods = state
    assert jobs[failed_job]["status"]["restarts"] >= 1, f"{failed_job} failed during the gap and was not restarted"
    names = [p["metadata"]["name"] for p in pods]
    assert len(names) == len(set(names)) == JOBS * WORKERS
    all_pods = jobs_and_pods(cp, namespace)[1]
    owners = {p["metadata"]["ownerReferences"][0]["uid"] for p in all_pods}
    assert owners <= {j["metadata"]["uid"] for j in jobs.values()}, "a pod owned by no job (orphan)"

    audit_log = Path(cp.state_dir) / "logs" / "audit.log"
    # the e2e control plane writes an audit log (conftest: LLMTO_CP_AUDIT=1); a run without it proves nothing here
    assert audit_log.exists(), f"{audit_log} missing: start the control plane with LLMTO_CP_AUDIT=1"
    time.sleep(1)  # the audit log is written as requests complete
    assert audit_writes(audit_log, "(replica-a_", took_over_wall), "no write of the leader's in the audit log: the check is blind"
    assert audit_writes(audit_log, "(replica-b_", took_over_wall) == [], "the standby wrote before it held the Lease"
    assert killed_wall < took_over_wall
    # every gang's pods created once: WORKERS per job and restart, no more
    assert pod_creates(audit_log, namespace) == sum(WORKERS * (1 + j["status"].get("restarts", 0)) for j in jobs.values())

    # SIGTERM, as a rolling update does once the new replica is ready: release, hand-over in about a retry period
    before = {p["metadata"]["uid"] for p in pods}
    restarts = {n: j["status"].get("restarts", 0) for n, j in jobs.items()}
    c = replicas("replica-c")
    cp.wait_for(c.ready, timeout=60, what="replica-c ready as a warm standby")
    b.proc.terminate()
    terminated = time.monotonic()
    handed_over = wait_holder(cp, c, timeout=LEASE_SECONDS + 20)
    hand_over_s = handed_over - terminated
    print(f"hand-over after SIGTERM: {hand_over_s:.1f} s", file=sys.stderr)
    assert hand_over_s < LEASE_SECONDS, "the Lease was not released: the standby waited for it to expire"
    b.proc.wait(30)
    assert b.proc.returncode == 0, b.log_tail()

    # the new leader reconciles every job at once from its warm view: watch a few seconds of it
    watch_until = time.monotonic() + 5
    while time.monotonic() < watch_until:
        jobs, pods = cp.wait_for(lambda: converged(cp, namespace), timeout=120, what="all jobs still running")
        assert {n: j["status"].get("restarts", 0) for n, j in jobs.items()} == restarts, "a job restarted because of the hand-over"
        assert {p["metadata"]["uid"] for p in pods} == before, "a pod was created again after the hand-over"
