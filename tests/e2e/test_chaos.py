"""The operator when the cluster misbehaves around it: the API server restarting in the middle of a batch,
and a namespace deleted under running jobs. (Operator SIGKILLs: test_operator.py, test_gang_lifecycle.py.)"""

from __future__ import annotations

import subprocess
import sys

from operator_harness import finish_pod, get_job, job_manifest, job_pods, json_documents, wait_phase


class JobWatch:
    """Every state of the namespace's jobs the API server shows, from a `kubectl get -w` stream."""

    def __init__(self, cp, namespace: str):
        self.proc = subprocess.Popen(
            [f"{cp.bin_dir}/kubectl", "get", "ltj", "-n", namespace, "-w", "--output-watch-events", "-o", "json"],
            env=cp.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def stop(self) -> list[dict]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=20)
        return [event["object"] for event in json_documents(out)]


def test_namespace_deletion_leaves_jobs_to_the_garbage_collector(control_plane, operator, namespace):
    """The namespace controller deletes the pods (and the jobs): no gang restart, no Failed, no Event into it."""
    cp = control_plane
    names = [f"doomed-{i}" for i in range(4)]
    for name in names:
        cp.apply(job_manifest(name, slots=1, runPolicy={"backoffLimit": 0}), namespace)
    for name in names:
        wait_phase(cp, operator, namespace, name, "Running")
    watch = JobWatch(cp, namespace)
    log_before = operator.log_path.read_text(errors="replace")
    cp.kubectl("delete", "namespace", namespace, "--wait=true", timeout=120)
    states = watch.stop()

    phases = {(s["metadata"]["name"], (s.get("status") or {}).get("phase")) for s in states}
    assert {phase for _, phase in phases} <= {"Running"}, sorted(phases)
    assert all((s.get("status") or {}).get("restarts", 0) == 0 for s in states)
    log = operator.log_path.read_text(errors="replace")[len(log_before):]
    assert "being terminated" not in log and "Restarting" not in log, log[-3000:]


def test_api_server_restart_during_a_batch_loses_nothing(control_plane, operator, namespace):
    """Restart kube-apiserver while the gangs are being created, and again right after the workers exit:
    every job reaches Running with exactly its pods, then Succeeded, without a later event to wake it."""
    cp = control_plane
    names = [f"batch-{i}" for i in range(6)]
    for name in names:
        cp.apply(job_manifest(name, nodes=3, slots=1), namespace)
    cp.restart("kube-apiserver")
    for name in names:
        wait_phase(cp, operator, namespace, name, "Running", timeout=120)
        assert sorted(p["metadata"]["name"] for p in job_pods(cp, namespace, name)) == [f"{name}-worker-{i}" for i in range(3)]
        assert get_job(cp, namespace, name)["status"]["restarts"] == 0

    for name in names:
        for rank in range(3):
            finish_pod(cp, namespace, f"{name}-worker-{rank}", 0)
    cp.restart("kube-apiserver")
    for name in names:
        job = wait_phase(cp, operator, namespace, name, "Succeeded", timeout=120)
        assert job["status"]["restarts"] == 0, job["status"]
    print(f"operator log tail:\n{operator.log_tail(20)}", file=sys.stderr)
