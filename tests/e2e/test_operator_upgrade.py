"""`helm upgrade` of the operator to another image while jobs run, with the operator's pods running for real.

The chart's two replicas run on the real node of hack/realnode.sh, from the operator image built from the
Dockerfile (hack/images.sh), so the rolling update really starts new pods, waits for their readiness (a warm
view) and stops the old ones with SIGTERM (the leader releases the Lease). The jobs' worker pods are on the kwok
nodes, so they cost nothing: half of them end while the rollout goes on (told to exit as `helm upgrade` starts, each
after its own kwok exit delay), the others once it is over. What must hold:

- every job Succeeded, never restarted (status.restarts 0), none Failed;
- every worker pod created once: the API server's audit log has one 201 `create pods` per name, and every pod
  keeps the UID it had before the upgrade (the ssh jobs' sshd-only workers aside: the operator deletes those, and no
  other pod, once their job succeeded); one Workload and one PodGroup per job where Kubernetes serves them;
- no replica wrote while it did not hold the Lease (the audit log's User-Agents name the replica);
- the Lease ends with a replica of the new image; no child is left without its job.

The time without a leader (Lease released or expired → taken by the next replica) is printed, not asserted.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import test_real_node
from audit_trail import Write, creates_by_name, pod_creates_by_name, unix_time, writes
from llm_operator.lease import LEASE_NAME, Timing
from llm_operator.render.names import JOB_NAME_LABEL
from operator_harness import job_manifest, json_documents, lease_holder
from test_real_node import CHART

if TYPE_CHECKING:
    from conftest import ControlPlane

pytestmark = pytest.mark.e2e

# the real-node fixtures, from the one place they are defined (module-scoped: this module gets its own real node,
# namespace and release)
real_node = test_real_node.real_node
operator_image = test_real_node.operator_image
real_ns = test_real_node.real_ns
cluster_operator = test_real_node.cluster_operator

RENEW_DEADLINE_SECONDS = Timing().renew_deadline_seconds  # a leader that could not renew for this long writes no more
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={test_real_node.RELEASE},app.kubernetes.io/component=operator"
JOBS, WORKERS = 8, 2
KINDS = ("noSsh", "ssh", "program")  # the built-in trainer in both launcher modes, and a program job (its init container
# comes from the operator image: LLMTO_LAUNCHER_IMAGE changes with the upgrade, the running pods must not)
EXIT_DELAYS = (1, 3, 5, 8)  # the first jobs' pods exit 0 this long after `helm upgrade` started (a rollout takes about 7 s
# on an idle machine: some end during a hand-over); the other jobs' pods run until told, after the rollout
ROLLOUT_TIMEOUT = 360


def upgrade_job(cp: ControlPlane, index: int) -> dict:
    kind = KINDS[index % len(KINDS)]
    key, _, value = cp.GPU_NODE_SELECTOR.partition("=")
    # cleanPodPolicy None: a finished job keeps its pods (by default the ones still running are deleted), so that every
    # pod's UID can be compared with what it was before the upgrade; in ssh mode the workers but 0 run only sshd, which
    # never exits by itself: the operator stops them once worker 0 (the launcher) has exited 0, whatever the policy
    manifest = job_manifest(f"upg-{index}-{kind.lower()}", nodes=WORKERS, slots=1, accelerator="cpu",
                            resources={"requests": {"cpu": "10m", "memory": "16Mi"}}, runPolicy={"cleanPodPolicy": "None"},
                            podTemplate={"nodeSelector": {key: value}, "tolerations": [cp.GPU_TOLERATION], "terminationGracePeriodSeconds": 5})
    if kind == "program":
        for field in ("model", "data", "training", "deepspeed"):
            manifest["spec"].pop(field, None)
        manifest["spec"]["program"] = {"command": ["python3", "train.py"], "launcher": "torchrun"}
    else:
        manifest["spec"]["launcher"] = {"mode": kind}
    return manifest


def sshd_only(pod: str) -> bool:
    """A worker of an ssh-mode job other than worker 0: sshd only, stopped by the operator when the job succeeds."""
    return "-ssh-worker-" in pod and not pod.endswith("-worker-0")


class LeaseWatch:
    """`kubectl get lease -w -o json` in the background: every record the Lease had, which polling could miss (a
    released Lease is free for about a retry period)."""

    def __init__(self, cp: ControlPlane, namespace: str, log_dir: Path):
        self.path = log_dir / "lease-watch.json"
        self.out = open(self.path, "w")
        self.err = open(log_dir / "lease-watch.err", "w")
        self.proc = subprocess.Popen([f"{cp.bin_dir}/kubectl", "-n", namespace, "get", "lease", LEASE_NAME, "-w", "-o", "json"],
                                     env=cp.env, stdout=self.out, stderr=self.err, stdin=subprocess.DEVNULL)

    def stop(self) -> list[dict]:
        """The Lease's specs in the order the API server wrote them."""
        self.proc.terminate()
        self.proc.wait(10)
        self.out.close()
        self.err.close()
        specs, versions = [], set()
        for obj in json_documents(self.path.read_text()):
            for lease in obj.get("items", []) if obj.get("kind") == "List" else [obj]:
                if lease["metadata"]["resourceVersion"] not in versions:
                    versions.add(lease["metadata"]["resourceVersion"])
                    specs.append(lease["spec"])
        return specs


def terms(specs: list[dict]) -> list[dict]:
    """Each holder's term: identity, acquired (wall), ended (wall: its release, or its last renewal plus the renew
    deadline if it let the Lease expire; None while it holds it), how (released/expired/holding)."""
    out: list[dict] = []
    for spec in specs:
        holder = spec.get("holderIdentity") or ""
        current = out[-1] if out else None
        if not holder:  # released (operator/lease.py release: the release time in renewTime)
            if current and current["how"] == "holding":
                current.update(ended=unix_time(spec["renewTime"]), how="released")
            continue
        if current is None or current["identity"] != holder or current["how"] != "holding":
            if current and current["how"] == "holding":  # taken over without a release: it expired
                current.update(ended=current["renewed"] + RENEW_DEADLINE_SECONDS, how="expired")
            out.append({"identity": holder, "acquired": unix_time(spec["acquireTime"]), "ended": None, "how": "holding"})
        out[-1]["renewed"] = unix_time(spec["renewTime"])
    return out


def out_of_term(found: list[Write], held: list[dict], replicas: set[str], since: float) -> list[str]:
    """The writes (the Lease aside) of this release's replicas (by pod name) received from `since` (the Lease watch's
    start: the terms before it are unknown) while the writer did not hold the Lease. The audit log is the control
    plane's: it holds the writes of earlier tests' operator pods too, of the same release name in other namespaces."""
    bad = []
    for w in found:
        if w.identity.rpartition("_")[0] not in replicas or w.received < since or w.resource == "leases":
            continue
        mine = [t for t in held if t["identity"] == w.identity]
        if not any(t["acquired"] <= w.received <= (t["ended"] or float("inf")) for t in mine):
            bad.append(f"{w.identity}: {w} at {w.received:.3f} (terms: {[(t['acquired'], t['ended']) for t in mine]})")
    return bad


def operator_pods(cp: ControlPlane, ns: str) -> list[dict]:
    return cp.get_json("-n", ns, "pods", "-l", OPERATOR_SELECTOR)["items"]


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def test_helm_upgrade_to_another_operator_image_while_jobs_run(control_plane: ControlPlane, cluster_operator: dict[str, Any],
                                                               operator_image: str, tmp_path: Path):
    cp = control_plane
    ns = cluster_operator["namespace"]
    audit_log = Path(cp.state_dir) / "logs" / "audit.log"
    assert audit_log.exists(), f"{audit_log} missing: start the control plane with LLMTO_CP_AUDIT=1"
    # another reference to the operator's image: hack/images.sh import tags every image it imports :dev as well. A new
    # image reference is what a release changes in the pod template; the bytes do not matter to the rollout
    new_image = operator_image.rsplit(":", 1)[0] + ":dev"
    assert new_image != operator_image
    old_pods = {p["metadata"]["name"] for p in operator_pods(cp, ns)}
    first_holder = lease_holder(cp, ns)
    assert first_holder.rpartition("_")[0] in old_pods, (first_holder, old_pods)
    watched_from = time.time()
    lease_watch = LeaseWatch(cp, ns, tmp_path)

    names = [upgrade_job(cp, i)["metadata"]["name"] for i in range(JOBS)]
    cp.apply([upgrade_job(cp, i) for i in range(JOBS)], namespace=ns)
    try:
        def all_running() -> dict[str, str] | None:
            jobs = cp.get_json("-n", ns, "ltj")["items"]
            pods = cp.get_json("-n", ns, "pods", "-l", JOB_NAME_LABEL)["items"]
            if len(jobs) == JOBS and all((j.get("status") or {}).get("phase") == "Running" for j in jobs) \
                    and len(pods) == JOBS * WORKERS and all(p["status"].get("phase") == "Running" for p in pods):
                return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
            return None

        before = cp.wait_for(all_running, timeout=180, interval=1, what=f"{JOBS} jobs × {WORKERS} workers Running")
        assert all(p["spec"]["nodeName"] != "realnode" for p in cp.get_json("-n", ns, "pods", "-l", JOB_NAME_LABEL)["items"])

        # the upgrade: the same values but the image (and with it LLMTO_LAUNCHER_IMAGE); the first jobs' pods told to exit
        # a few seconds into it
        started_wall, started = time.time(), time.monotonic()
        for i, delay in enumerate(EXIT_DELAYS):
            timed = sorted(pod for pod in before if pod.startswith(f"upg-{i}-") and not sshd_only(pod))
            cp.kubectl("-n", ns, "annotate", "pod", *timed, f"{cp.EXIT_CODE_ANNOTATION}=0",
                       f"{cp.EXIT_DELAY_ANNOTATION}={max(0.0, delay - (time.monotonic() - started)):.1f}s")
        upgrade = cp.run("helm", "upgrade", test_real_node.RELEASE, str(CHART), "-n", ns, "--reuse-values",
                         "--set-string", f"image.tag={new_image.rsplit(':', 1)[1]}", "--wait", "--timeout", f"{ROLLOUT_TIMEOUT}s",
                         check=False, timeout=ROLLOUT_TIMEOUT + 60)
        helm_s = time.monotonic() - started
        if upgrade.returncode != 0:
            describe = cp.kubectl("-n", ns, "describe", "pods", "-l", OPERATOR_SELECTOR, check=False).stdout
            pytest.fail(f"helm upgrade failed: {upgrade.stderr}\n{describe[-4000:]}", pytrace=False)

        def rolled_out() -> tuple[list[dict], str] | None:
            """Both replicas of the new image ready, the old ones gone, one of the new ones holding the Lease."""
            pods = operator_pods(cp, ns)
            if len(pods) != 2 or any(p["metadata"].get("deletionTimestamp") or p["metadata"]["name"] in old_pods or not ready(p)
                                     for p in pods):
                return None
            holder = lease_holder(cp, ns)
            return (pods, holder) if holder.rpartition("_")[0] in {p["metadata"]["name"] for p in pods} else None

        new_pods, holder = cp.wait_for(rolled_out, timeout=ROLLOUT_TIMEOUT, interval=0.5, what="the rollout: two new replicas, one leading")
        rollout_s, rolled_out_wall = time.monotonic() - started, time.time()
        assert {c["image"] for p in new_pods for c in p["spec"]["containers"]} == {new_image}
        print(f"helm upgrade --wait returned after {helm_s:.1f} s; both new replicas ready, the old gone and "
              f"{holder.rpartition('_')[0]} holding the Lease after {rollout_s:.1f} s", file=sys.stderr)

        # the jobs still running now end; then every job must have succeeded without a restart
        untimed = sorted(pod for pod in before if not any(pod.startswith(f"upg-{i}-") for i in range(len(EXIT_DELAYS)))
                         and not sshd_only(pod))
        cp.kubectl("-n", ns, "annotate", "pod", *untimed, f"{cp.EXIT_CODE_ANNOTATION}=0")

        def all_succeeded() -> list[dict] | None:
            jobs = cp.get_json("-n", ns, "ltj")["items"]
            failed = [j["metadata"]["name"] for j in jobs if (j.get("status") or {}).get("phase") == "Failed"]
            assert not failed, f"jobs failed: {failed}"
            return jobs if all((j.get("status") or {}).get("phase") == "Succeeded" for j in jobs) else None

        jobs = cp.wait_for(all_succeeded, timeout=180, interval=1, what="every job Succeeded")
        specs = lease_watch.stop()

        # no job restarted or failed because of the upgrade
        assert sorted(j["metadata"]["name"] for j in jobs) == sorted(names)
        assert {j["metadata"]["name"]: j["status"].get("restarts", 0) for j in jobs} == {n: 0 for n in names}

        # every worker pod created once: the same pods (by UID) as before the upgrade, one create each in the audit log;
        # the only pods deleted are the ssh jobs' sshd-only workers, once their job succeeded
        pods = cp.get_json("-n", ns, "pods", "-l", JOB_NAME_LABEL)["items"]
        kept = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods if not p["metadata"].get("deletionTimestamp")}
        assert kept == {name: uid for name, uid in before.items() if not sshd_only(name)}, "a worker pod was created again"
        deleted = [w for w in writes(audit_log) if w.identity and w.verb == "delete" and w.resource == "pods" and w.namespace == ns]
        assert sorted({w.name for w in deleted}) == sorted(name for name in before if sshd_only(name)), [str(w) for w in deleted]
        time.sleep(1)  # the audit log is written as requests complete
        creates = pod_creates_by_name(audit_log, ns)
        assert creates == {name: 1 for name in before}, f"pod creates by name: {dict(creates)}"

        # no orphan: every child of a job (by its label) is owned by a job that exists
        uids = {j["metadata"]["uid"] for j in jobs}
        gang_kinds = cp.kubectl("api-resources", "--api-group=scheduling.k8s.io", "-o", "name").stdout.split()
        gang_kinds = [k for k in gang_kinds if k.split(".")[0] in ("workloads", "podgroups")]  # Kubernetes' gang scheduling
        children = cp.get_json("-n", ns, ",".join(["pods", "services", "configmaps", "secrets", *gang_kinds]), "-l", JOB_NAME_LABEL)["items"]
        orphans = [f"{c['kind']}/{c['metadata']['name']}" for c in children
                   if not any(o.get("controller") and o["uid"] in uids for o in c["metadata"].get("ownerReferences") or [])]
        assert not orphans, f"children without their job: {orphans}"
        for kind in gang_kinds:  # one gang per job
            made = creates_by_name(audit_log, ns, kind.split(".")[0])
            assert not made or made == {name: 1 for name in names}, f"{kind} creates by name: {dict(made)}"

        # the Lease's terms: the last holder is a new replica; nobody wrote outside its own term
        held = terms(specs)
        assert held and held[0]["identity"] == first_holder and held[-1]["identity"] == holder, held
        assert holder.rpartition("_")[0] not in old_pods
        replicas = old_pods | {p["metadata"]["name"] for p in new_pods}
        bad = out_of_term(writes(audit_log), held, replicas, watched_from)
        assert not bad, "writes by a replica that did not hold the Lease:\n" + "\n".join(bad)
        assert any(w.identity == holder and w.resource != "leases" for w in writes(audit_log)), \
            "no write of the new leader's in the audit log: the check is blind"

        # the figures: each hand-over's time without a leader, and when the self-ending jobs' pods ended
        gaps = []
        for old, new in zip(held, held[1:]):
            gap = new["acquired"] - old["ended"]
            gaps.append(gap)
            print(f"hand-over {old['identity'].rpartition('_')[0]} -> {new['identity'].rpartition('_')[0]}: {old['how']} "
                  f"{old['ended'] - started_wall:+.1f} s after `helm upgrade` started, taken {gap:.2f} s later", file=sys.stderr)
        print(f"{len(gaps)} hand-over(s); time without a leader: {sum(gaps):.2f} s in all (longest {max(gaps, default=0):.2f} s)",
              file=sys.stderr)
        during = 0
        for pod in pods:
            for status in pod["status"].get("containerStatuses") or []:
                finished = ((status.get("state") or {}).get("terminated") or {}).get("finishedAt")
                if finished and pod["metadata"]["name"] not in untimed and not sshd_only(pod["metadata"]["name"]):
                    during += started_wall <= unix_time(finished) <= rolled_out_wall
        told = len([name for name in before if name not in untimed and not sshd_only(name)])
        print(f"{during} of the {told} pods told to exit as the upgrade began ended during the rollout",
              file=sys.stderr)
    finally:
        if lease_watch.proc.poll() is None:
            lease_watch.stop()
        cp.kubectl("-n", ns, "delete", "ltj", "--all", "--wait=true", "--timeout=120s", check=False, timeout=150)
