"""What the operator knows of the cluster between requests, fed by the watch streams: each job's body, the few
facts of each worker pod that the decisions read, and the namespaces being deleted.

A reconcile reads this view instead of GETting the job and LISTing its pods, so a reconcile that would change
nothing makes no request. The operator's own writes are merged in from their responses (a created pod, the
status just patched), so the view never lags behind what the operator itself did; a watch event older than
what the view holds is ignored (resource versions are comparable: KEP-5504). An object seen deleted leaves
a tombstone, so a late event or response never brings it back. A watch that is relisted (after the API
server restarted, or its history expired) does not say what was deleted meanwhile: replace_pods and
replace_jobs take a fresh listing for that.

A finished job whose decisions are done (settle: terminal, nothing left to write or stop, every pod ended) is
compacted until its TTL fires or it is deleted: its pods and Workload leave the view, its record shrinks to
its resource version, UID and a digest of its slim body (SettledJob), and later events of its pods are not
stored. A job event that changes what the digest covers brings the whole job back (recall_job); so does the
job's TTL, through a GET (reconcile.py). A finished job's decisions read only its status and TTL: its spec
is immutable, and its ended pods are already summed up in its status (tests/unit/test_compaction.py).

Thread-safe: watch events arrive on the event loop, reconciles read and merge from worker threads.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional

from .kueue import GROUP as KUEUE_GROUP
from .kueue import slim_workload
from .render.names import JOB_NAME_LABEL, NODE_RANK_LABEL, RESTART_LABEL

JobKey = tuple[str, str]  # (namespace, job name)
TOMBSTONE_SECONDS = 300.0
_POD_LABELS = (NODE_RANK_LABEL, RESTART_LABEL)
_DETAILED_CONDITIONS = ("Ready", "DisruptionTarget")  # the others only matter as (type, status) to podFailurePolicy
_TERMINATED_FIELDS = ("exitCode", "reason", "message", "finishedAt")
KUEUE_LABEL_PREFIX = f"{KUEUE_GROUP}/"


def is_newer(version: Optional[str], than: Optional[str]) -> bool:
    """Resource versions compare as integers (KEP-5504); anything else counts as newer (the latest arrival wins)."""
    if version and than and version.isdigit() and than.isdigit():
        return (len(version), version) > (len(than), than)
    return True


def slim_pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The pod as the API shows it, reduced to what lifecycle.py, failures.py and progress.py read."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    slim_meta: dict[str, Any] = {"name": meta["name"], "uid": meta.get("uid"),
                                 "labels": {k: labels[k] for k in _POD_LABELS if k in labels},
                                 "ownerReferences": [{"uid": ref.get("uid")} for ref in meta.get("ownerReferences") or []]}
    if meta.get("deletionTimestamp"):
        slim_meta["deletionTimestamp"] = meta["deletionTimestamp"]
    slim_status = {k: status[k] for k in ("phase", "reason", "message", "podIP") if status.get(k)}
    conditions = [_slim_condition(c) for c in status.get("conditions") or []]
    if conditions:
        slim_status["conditions"] = conditions
    terminated = [{"name": c.get("name"), "state": {"terminated": {k: t[k] for k in _TERMINATED_FIELDS if k in t}}}
                  for c in status.get("containerStatuses") or [] if (t := (c.get("state") or {}).get("terminated"))]
    if terminated:
        slim_status["containerStatuses"] = terminated
    return {"metadata": slim_meta, "spec": {"nodeName": spec.get("nodeName")}, "status": slim_status}


def _slim_condition(condition: Mapping[str, Any]) -> dict[str, Any]:
    if condition.get("type") in _DETAILED_CONDITIONS:
        return {k: condition[k] for k in ("type", "status", "reason", "message", "lastTransitionTime") if condition.get(k)}
    return {"type": condition.get("type"), "status": condition.get("status")}


def slim_job(body: Mapping[str, Any]) -> dict[str, Any]:
    """The job without what no decision reads (managedFields, annotations such as kubectl's last-applied copy),
    its spec (immutable, read only by a reconcile) kept as compact JSON: a tenth of the memory of the dicts."""
    meta = body["metadata"]
    keep = ("name", "namespace", "uid", "generation", "creationTimestamp", "deletionTimestamp")
    slim_meta = {k: meta[k] for k in keep if k in meta}
    kueue_labels = {k: v for k, v in (meta.get("labels") or {}).items() if k.startswith(KUEUE_LABEL_PREFIX)}
    if kueue_labels:  # the LocalQueue and priority class (kueue.py)
        slim_meta["labels"] = kueue_labels
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": slim_meta,
            "spec": json.dumps(body.get("spec") or {}, separators=(",", ":")), "status": body.get("status") or {}}


def _observe_listed(items: Iterable[Mapping[str, Any]], observe: Callable[[Mapping[str, Any]], Any]) -> tuple[set, set[Optional[str]]]:
    """Each listed object observed as it comes (a Listing holds one page, never the whole collection): the truthy
    results of `observe` (the jobs whose pods changed), and the listed UIDs."""
    changed, listed = set(), set()
    for item in items:
        listed.add(item["metadata"].get("uid"))
        if (key := observe(item)):
            changed.add(key)
    return changed, listed


class SettledJob(NamedTuple):
    """What the view keeps of a settled job: enough to tell a change (digest), a namesake (uid) and an old event."""

    version: str
    uid: Optional[str]
    digest: bytes


def job_digest(slim: Mapping[str, Any]) -> bytes:
    """16 bytes that change with anything a decision reads of the slim job."""
    return hashlib.blake2b(json.dumps(slim, sort_keys=True, separators=(",", ":")).encode(), digest_size=16).digest()


class ClusterView:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[JobKey, tuple[str, dict]] = {}  # → (resourceVersion, slim body)
        self._pods: dict[JobKey, dict[str, tuple[str, dict]]] = {}  # → pod name → (resourceVersion, slim pod)
        self._tombstones: dict[str, float] = {}  # uid of a deleted pod or job → when (monotonic)
        self._terminating: set[str] = set()  # namespaces being deleted
        self._workloads: dict[JobKey, tuple[str, dict]] = {}  # Kueue Workloads (kueue.slim_workload) → (resourceVersion, slim)
        self._settled: dict[JobKey, SettledJob] = {}  # finished jobs with nothing left to decide but their TTL

    # -------------------------------------------------------------------------------------------- jobs
    def job(self, namespace: str, name: str) -> Optional[dict]:
        with self._lock:
            entry = self._jobs.get((namespace, name))
        return {**entry[1], "spec": json.loads(entry[1]["spec"])} if entry else None

    def job_keys(self) -> list[JobKey]:
        with self._lock:
            return [*self._jobs, *self._settled]

    def observe_job(self, body: Mapping[str, Any]) -> bool:
        """A job from the watch or from a response; True if what a decision reads changed."""
        meta = body["metadata"]
        key, version = (meta["namespace"], meta["name"]), meta.get("resourceVersion") or ""
        with self._lock:
            if meta.get("uid") in self._tombstones:
                return False  # a deleted job's late event
            settled = self._settled.get(key)
            if settled is not None:
                return self._observe_settled(key, settled, version, body)
            old = self._jobs.get(key)
            if old is not None and not is_newer(version, old[0]):
                return False  # older than what the view holds
            slim = slim_job(body)
            self._jobs[key] = (version, slim)
        return old is None or old[1] != slim

    def _observe_settled(self, key: JobKey, settled: SettledJob, version: str, body: Mapping[str, Any]) -> bool:
        same_job = settled.uid == body["metadata"].get("uid")
        if same_job and not is_newer(version, settled.version):
            return False
        slim = slim_job(body)
        if same_job and job_digest(slim) == settled.digest:
            self._settled[key] = settled._replace(version=version)
            return False
        del self._settled[key]  # changed, or a namesake: a whole job again (its ended pods are not needed back)
        self._jobs[key] = (version, slim)
        return True

    # ------------------------------------------------------------------------------- settled jobs
    def settle(self, namespace: str, name: str, uid: Optional[str]) -> bool:
        """Compact a finished job whose decisions are done (compaction.is_settled): drop its pods and Workload, keep
        a SettledJob. False if the view holds no such job (or a namesake)."""
        key = (namespace, name)
        with self._lock:
            entry = self._jobs.get(key)
            if entry is None or entry[1]["metadata"].get("uid") != uid:
                return False
            del self._jobs[key]
            self._settled[key] = SettledJob(entry[0], uid, job_digest(entry[1]))
            self._pods.pop(key, None)
            self._workloads.pop(key, None)
            return True

    def is_settled(self, namespace: str, name: str) -> bool:
        with self._lock:
            return (namespace, name) in self._settled

    def settled_uid(self, namespace: str, name: str) -> Optional[str]:
        with self._lock:
            settled = self._settled.get((namespace, name))
        return settled.uid if settled is not None else None

    def recall_job(self, body: Mapping[str, Any]) -> bool:
        """The whole job again, fetched for a settled one (its TTL fired): False if it is a namesake, deleted, or older."""
        meta = body["metadata"]
        key, version = (meta["namespace"], meta["name"]), meta.get("resourceVersion") or ""
        with self._lock:
            settled = self._settled.get(key)
            if meta.get("uid") in self._tombstones or settled is None or settled.uid != meta.get("uid"):
                return key in self._jobs and self._jobs[key][1]["metadata"].get("uid") == meta.get("uid")
            del self._settled[key]
            self._jobs[key] = (version, slim_job(body))
            return True

    def forget_job(self, body: Mapping[str, Any]) -> bool:
        """The job was deleted; False if the view holds a namesake created since (that one stays)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            self._bury(meta.get("uid"))
            settled = self._settled.get(key)
            if settled is not None:
                if settled.uid != meta.get("uid"):
                    return False
                del self._settled[key]
                return True
            old = self._jobs.get(key)
            if old is not None and old[1]["metadata"].get("uid") != meta.get("uid"):
                return False
            self._jobs.pop(key, None)
            return True

    # -------------------------------------------------------------------------------------------- pods
    def pods(self, namespace: str, job_name: str, owner_uid: Optional[str]) -> list[dict]:
        """The job's pods: labelled for it *and* owned by this incarnation (not a deleted namesake's)."""
        with self._lock:
            entries = list(self._pods.get((namespace, job_name), {}).values())
        return [pod for _, pod in entries if any(ref["uid"] == owner_uid for ref in pod["metadata"]["ownerReferences"])]

    def observe_pod(self, pod: Mapping[str, Any], deleted: bool = False) -> Optional[JobKey]:
        """A pod from the watch or from a response; the key of its job if what a decision reads changed."""
        meta = pod["metadata"]
        job = (meta.get("labels") or {}).get(JOB_NAME_LABEL)
        if job is None:
            return None
        key, name, uid, version = (meta["namespace"], job), meta["name"], meta.get("uid"), meta.get("resourceVersion") or ""
        with self._lock:
            if key in self._settled:  # its ended pods are summed up in its status: nothing to keep
                if deleted:
                    self._bury(uid)
                return None
            pods = self._pods.get(key, {})
            old = pods.get(name)
            same_pod = old is not None and old[1]["metadata"]["uid"] == uid
            if deleted:
                self._bury(uid)
                if not same_pod:
                    return None
                del pods[name]
                if not pods:
                    self._pods.pop(key, None)
                return key
            if uid in self._tombstones or (old is not None and not is_newer(version, old[0])):
                return None
            slim = slim_pod(pod)
            self._pods.setdefault(key, pods)[name] = (version, slim)
            return None if same_pod and old is not None and old[1] == slim else key

    def replace_pods(self, pods: Iterable[Mapping[str, Any]], version: str, namespaces: Optional[set[str]] = None) -> set[JobKey]:
        """A fresh listing of the pods in `namespaces` (None: all) as of resource version `version`: what a
        relisted watch does not say is which pods went meanwhile. Returns the jobs whose pods changed."""
        changed, listed = _observe_listed(pods, self.observe_pod)
        with self._lock:
            for key, entries in list(self._pods.items()):
                if namespaces is not None and key[0] not in namespaces:
                    continue
                for name, (rv, pod) in list(entries.items()):
                    if pod["metadata"]["uid"] not in listed and not is_newer(rv, version):
                        self._bury(pod["metadata"]["uid"])
                        del entries[name]
                        changed.add(key)
                if not entries:
                    del self._pods[key]
        return changed

    def replace_jobs(self, jobs: Iterable[Mapping[str, Any]], version: str, namespaces: Optional[set[str]] = None) -> set[JobKey]:
        """A fresh listing of the jobs, as replace_pods; returns the jobs that are gone."""
        _, listed = _observe_listed(jobs, self.observe_job)
        gone: set[JobKey] = set()
        with self._lock:
            for key, (rv, job) in list(self._jobs.items()):
                uid = job["metadata"].get("uid")
                if (namespaces is None or key[0] in namespaces) and uid not in listed and not is_newer(rv, version):
                    self._bury(uid)
                    del self._jobs[key]
                    gone.add(key)
            for key, settled in list(self._settled.items()):
                if (namespaces is None or key[0] in namespaces) and settled.uid not in listed and not is_newer(settled.version, version):
                    self._bury(settled.uid)
                    del self._settled[key]
                    gone.add(key)
        return gone

    def _bury(self, uid: Optional[str]) -> None:
        now = time.monotonic()
        while self._tombstones:  # oldest first (insertion order)
            oldest, since = next(iter(self._tombstones.items()))
            if now - since < TOMBSTONE_SECONDS:
                break
            del self._tombstones[oldest]
        if uid:
            self._tombstones[uid] = now

    # -------------------------------------------------------------------------------------- workloads
    def workload(self, namespace: str, job_name: str, owner_uid: Optional[str]) -> Optional[dict]:
        """The job's Kueue Workload, if this incarnation of the job owns it."""
        with self._lock:
            entry = self._workloads.get((namespace, job_name))
        if entry is None or not any(ref["uid"] == owner_uid for ref in entry[1]["metadata"]["ownerReferences"]):
            return None
        return entry[1]

    def observe_workload(self, workload: Mapping[str, Any], deleted: bool = False) -> Optional[JobKey]:
        """A Workload from the watch or a response; the key of its job if what a decision reads changed."""
        meta = workload["metadata"]
        job = (meta.get("labels") or {}).get(JOB_NAME_LABEL)
        if job is None:
            return None
        key, uid, version = (meta["namespace"], job), meta.get("uid"), meta.get("resourceVersion") or ""
        with self._lock:
            if key in self._settled:  # marked Finished before the job settled (compaction.is_settled)
                if deleted:
                    self._bury(uid)
                return None
            old = self._workloads.get(key)
            same = old is not None and old[1]["metadata"].get("uid") == uid
            if deleted:
                self._bury(uid)
                if not same:
                    return None
                del self._workloads[key]
                return key
            if uid in self._tombstones or (same and old is not None and not is_newer(version, old[0])):
                return None
            slim = slim_workload(workload)
            self._workloads[key] = (version, slim)
            return None if same and old is not None and old[1]["status"] == slim["status"] else key

    def replace_workloads(self, workloads: Iterable[Mapping[str, Any]], version: str, namespaces: Optional[set[str]] = None) -> set[JobKey]:
        """A fresh listing of the Workloads, as replace_pods; returns the jobs whose Workload changed or went."""
        changed, listed = _observe_listed(workloads, self.observe_workload)
        with self._lock:
            for key, (rv, workload) in list(self._workloads.items()):
                uid = workload["metadata"].get("uid")
                if (namespaces is None or key[0] in namespaces) and uid not in listed and not is_newer(rv, version):
                    self._bury(uid)
                    del self._workloads[key]
                    changed.add(key)
        return changed

    # ------------------------------------------------------------------------------------- namespaces
    def observe_namespace(self, namespace: Mapping[str, Any], deleted: bool = False) -> bool:
        """True when the namespace has just started terminating."""
        meta = namespace["metadata"]
        with self._lock:
            if deleted or not meta.get("deletionTimestamp"):
                self._terminating.discard(meta["name"])
                return False
            if meta["name"] in self._terminating:
                return False
            self._terminating.add(meta["name"])
            return True

    def mark_terminating(self, namespace: str) -> None:
        with self._lock:
            self._terminating.add(namespace)

    def is_terminating(self, namespace: str) -> bool:
        with self._lock:
            return namespace in self._terminating

    def jobs_in(self, namespace: str) -> list[JobKey]:
        with self._lock:
            return [key for key in (*self._jobs, *self._settled) if key[0] == namespace]

    def size(self) -> tuple[int, int]:
        """(jobs, pods) held; settled jobs count as jobs."""
        with self._lock:
            return len(self._jobs) + len(self._settled), sum(len(p) for p in self._pods.values())

    def settled_count(self) -> int:
        with self._lock:
            return len(self._settled)
