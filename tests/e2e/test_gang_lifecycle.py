"""The job's whole life on a real control plane: gang restarts, failure rules, backoffLimit, an operator
killed mid-restart, deadlines, TTL and stall detection. kwok ends pods with the exit code a test
annotates (hack/controlplane/stages/pod-exit.yaml); the operator runs with a 1 s restart backoff."""

from __future__ import annotations

import sys
import time

from kstatus_tool import kstatus
from operator_harness import finish_pod, get_job, job_manifest, job_pods, wait_phase

RESTART_LABEL = "llmtraining.dev/restart"


def pod_uids(cp, namespace, name) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in job_pods(cp, namespace, name)}


def wait_restarted(cp, op, namespace, name, restarts, timeout=90) -> dict:
    """Running again, as gang `restarts`: every pod carries that restart label."""
    def done():
        job = get_job(cp, namespace, name)
        status = job.get("status", {})
        pods = job_pods(cp, namespace, name)
        labels = {p["metadata"]["labels"].get(RESTART_LABEL) for p in pods}
        return job if status.get("restarts") == restarts and status.get("phase") == "Running" and labels == {str(restarts)} else None

    try:
        return cp.wait_for(done, timeout=timeout, what=f"job {name} running as restart {restarts}")
    except BaseException:
        print(get_job(cp, namespace, name).get("status"), "\noperator log:\n", op.log_tail(), file=sys.stderr)
        raise


def events(cp, namespace, name) -> list[dict]:
    return cp.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]


def reasons(job) -> dict[str, str]:
    return {c["type"]: c["reason"] for c in job["status"]["conditions"] if c["status"] == "True"}


def test_failed_worker_restarts_the_gang_until_the_backoff_limit(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("phoenix", nodes=3, slots=2, runPolicy={"backoffLimit": 2}), namespace)
    wait_phase(cp, operator, namespace, "phoenix", "Running")
    first = pod_uids(cp, namespace, "phoenix")

    finish_pod(cp, namespace, "phoenix-worker-1", 137)
    job = wait_restarted(cp, operator, namespace, "phoenix", 1)
    second = pod_uids(cp, namespace, "phoenix")
    assert sorted(second) == sorted(first) and not set(second.values()) & set(first.values())  # same names, new pods
    assert job["status"]["countedRestarts"] == 1
    assert job["status"]["failure"]["pod"] == "phoenix-worker-1" and job["status"]["failure"]["exitCode"] == 137
    restart_events = [e for e in events(cp, namespace, "phoenix") if e["reason"] == "Restarting"]
    assert restart_events and "restarting the gang (restart 1, 1/2 counted" in restart_events[0]["message"]
    header, row = cp.kubectl("get", "ltj", "phoenix", "-n", namespace).stdout.splitlines()[:2]
    assert row[header.index("RESTARTS"):].split()[0] == "1"  # the printer column

    finish_pod(cp, namespace, "phoenix-worker-2", 1)
    wait_restarted(cp, operator, namespace, "phoenix", 2)
    finish_pod(cp, namespace, "phoenix-worker-0", 137)
    job = wait_phase(cp, operator, namespace, "phoenix", "Failed")
    assert reasons(job)["Failed"] == "BackoffLimitExceeded"
    assert job["status"]["restarts"] == 2 and job["status"]["countedRestarts"] == 2
    assert job["status"]["failure"]["pod"] == "phoenix-worker-0" and job["status"]["failure"]["exitCode"] == 137


def test_failjob_rule_fails_at_once(control_plane, operator, namespace):
    cp = control_plane
    rules = [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}}]
    cp.apply(job_manifest("usererror", runPolicy={"podFailurePolicy": {"rules": rules}}), namespace)
    wait_phase(cp, operator, namespace, "usererror", "Running")
    finish_pod(cp, namespace, "usererror-worker-0", 1)
    job = wait_phase(cp, operator, namespace, "usererror", "Failed")
    assert reasons(job)["Failed"] == "PodFailurePolicy"
    assert job["status"]["failure"]["reason"] == "UserError" and job["status"]["restarts"] == 0


def test_evicted_worker_restarts_without_counting(control_plane, operator, namespace):
    """A node drain evicts a worker through the Eviction API (DisruptionTarget): the default rule ignores it."""
    cp = control_plane
    cp.apply(job_manifest("drained"), namespace)
    wait_phase(cp, operator, namespace, "drained", "Running")
    node = cp.get_json("pod", "drained-worker-1", "-n", namespace)["spec"]["nodeName"]
    try:
        cp.kubectl("drain", node, "--pod-selector=llmtraining.dev/job-name=drained", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s", timeout=90)
        job = wait_restarted(cp, operator, namespace, "drained", 1)
    finally:
        cp.kubectl("uncordon", node)
    assert job["status"]["countedRestarts"] == 0
    assert job["status"]["failure"]["reason"] in ("Evicted", "PodDeleted")  # whether the operator saw the condition or only the deletion
    assert node not in {p["spec"]["nodeName"] for p in job_pods(cp, namespace, "drained")}  # the cordoned node got none


def test_operator_killed_mid_restart_converges_to_one_gang(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("resilient", nodes=3, slots=2), namespace)
    wait_phase(cp, operator, namespace, "resilient", "Running")
    # hold two old pods in Terminating, as a trainer saving its checkpoint would
    for pod in ("resilient-worker-0", "resilient-worker-2"):
        cp.kubectl("-n", namespace, "patch", "pod", pod, "--type=merge", "-p", '{"metadata":{"finalizers":["e2e.llmtraining.dev/hold"]}}')
    finish_pod(cp, namespace, "resilient-worker-1", 137)
    cp.wait_for(lambda: all(p["metadata"].get("deletionTimestamp") for p in job_pods(cp, namespace, "resilient")), timeout=60,
                what="the old gang terminating")
    operator.kill()
    operator.start()
    time.sleep(3)  # the restarted operator must not start the new gang beside the old one
    pods = job_pods(cp, namespace, "resilient")
    assert {p["metadata"]["labels"][RESTART_LABEL] for p in pods} == {"0"}, [p["metadata"]["name"] for p in pods]
    assert get_job(cp, namespace, "resilient")["status"]["restarts"] == 1
    for pod in ("resilient-worker-0", "resilient-worker-2"):
        cp.kubectl("-n", namespace, "patch", "pod", pod, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    job = wait_restarted(cp, operator, namespace, "resilient", 1)
    assert sorted(p["metadata"]["name"] for p in job_pods(cp, namespace, "resilient")) == [f"resilient-worker-{i}" for i in range(3)]
    assert job["status"]["restarts"] == 1 and job["status"]["countedRestarts"] == 1


def test_active_deadline_stops_the_gang(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("deadline", runPolicy={"activeDeadlineSeconds": 5}), namespace)
    job = wait_phase(cp, operator, namespace, "deadline", "Failed", timeout=60)
    assert reasons(job)["Failed"] == "DeadlineExceeded" and job["status"]["failure"]["reason"] == "DeadlineExceeded"
    cp.wait_for(lambda: not job_pods(cp, namespace, "deadline"), timeout=60, what="the gang stopped")


def test_ttl_deletes_the_finished_job(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("ephemeral", nodes=1, runPolicy={"ttlSecondsAfterFinished": 3}), namespace)
    wait_phase(cp, operator, namespace, "ephemeral", "Running")
    finish_pod(cp, namespace, "ephemeral-worker-0", 0)
    wait_phase(cp, operator, namespace, "ephemeral", "Succeeded")
    cp.wait_for(lambda: cp.kubectl("get", "ltj", "ephemeral", "-n", namespace, check=False).returncode != 0, timeout=60,
                what="the job deleted by its TTL")


def test_stalled_step_restarts_the_gang(control_plane, operator, namespace):
    """rank 0's step stops moving (a hung collective): Stalled, then a counted restart."""
    from prometheus_client import start_http_server

    from llm_trainer.metrics import Metrics

    cp = control_plane
    cp.apply(job_manifest("hung", nodes=1, runPolicy={"stallTimeoutSeconds": 10}), namespace)
    wait_phase(cp, operator, namespace, "hung", "Running")
    pod_ip = cp.get_json("pod", "hung-worker-0", "-n", namespace)["status"]["podIP"]
    metrics = Metrics(port=None, info={"model": "tiny"})
    metrics.step.set(4)
    metrics.loss.set(3.0)
    server, _ = start_http_server(29600, addr=pod_ip, registry=metrics.registry)
    try:
        cp.wait_for(lambda: get_job(cp, namespace, "hung")["status"].get("progress", {}).get("step") == 4, timeout=30, what="step 4 read")
        job = wait_restarted(cp, operator, namespace, "hung", 1, timeout=60)
    finally:
        server.shutdown()
    failure = job["status"]["failure"]
    assert failure["reason"] == "Stalled" and "step 4 has not advanced for 10 s" in failure["message"]
    assert job["status"]["countedRestarts"] == 1 and job["status"]["lostSeconds"] >= 10
    assert "Stalled" in {e["reason"] for e in events(cp, namespace, "hung")}


def test_suspend_stops_the_gang_and_resume_starts_a_new_one(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("pausable"), namespace)
    wait_phase(cp, operator, namespace, "pausable", "Running")
    cp.kubectl("patch", "ltj", "pausable", "-n", namespace, "--type=merge", "-p", '{"spec": {"runPolicy": {"suspend": true}}}')
    job = wait_phase(cp, operator, namespace, "pausable", "Suspended")
    cp.wait_for(lambda: not job_pods(cp, namespace, "pausable"), timeout=60, what="the suspended gang stopped")
    assert reasons(job)["Suspended"] == "JobSuspended" and job["status"]["restarts"] == 1
    assert reasons(job)["Ready"] == "Suspended" and kstatus(job) == "Current"  # where its spec asks it to be
    cp.kubectl("patch", "ltj", "pausable", "-n", namespace, "--type=merge", "-p", '{"spec": {"runPolicy": {"suspend": false}}}')
    job = wait_restarted(cp, operator, namespace, "pausable", 1)
    assert job["status"]["countedRestarts"] == 0 and "failure" not in job["status"]
    assert {e["reason"] for e in events(cp, namespace, "pausable")} >= {"JobSuspended", "JobResumed"}


def test_job_created_suspended_creates_no_pods(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("queued", runPolicy={"suspend": True}), namespace)
    wait_phase(cp, operator, namespace, "queued", "Suspended")
    time.sleep(2)
    assert job_pods(cp, namespace, "queued") == []
