"""What bench_operator.py observes of the API server: when objects appear and change (a watch of its own, with
receive times), and who sent which requests (the API server's audit log, hack/controlplane.sh LLMTO_CP_AUDIT=1)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import urllib3

WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


class Watch(threading.Thread):
    """Streams a collection's watch events to on_event(type, object, received_at) until stopped; reconnects.
    Raw JSON lines over the client's connection pool: no typed models (their CPU would skew the measurement)."""

    def __init__(self, kube, path: str, on_event: Callable[[str, dict, float], None]):
        """kube: an llm_operator.kube.Kube (its URL, auth headers and connection pool)."""
        super().__init__(daemon=True, name=f"watch {path}")
        self.kube, self.path, self.on_event = kube, path, on_event
        self.stopped = threading.Event()
        self.started_ok = threading.Event()
        self._response = None

    def stop(self) -> None:
        """Stop, and close the stream now (an API server shutting down waits for open watches)."""
        self.stopped.set()
        response = self._response
        if response is not None:
            response.shutdown()

    def run(self) -> None:
        version = ""
        while not self.stopped.is_set():
            query = [("watch", "1"), ("timeoutSeconds", "30")] + ([("resourceVersion", version)] if version else [])
            url, headers = self.kube.request_target(self.path, query)
            try:
                response = self._response = self.kube.api_client.rest_client.pool_manager.request(
                    "GET", url, headers={**headers, "Accept": "application/json"}, preload_content=False,
                    timeout=urllib3.Timeout(connect=10, read=60))
                self.started_ok.set()
                pending = b""
                for chunk in response.stream(1 << 16):
                    received = time.monotonic()
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            event = json.loads(line)
                            if event["type"] == "ERROR":
                                version = ""  # expired: start again from a listing
                                continue
                            version = event["object"]["metadata"].get("resourceVersion", version)
                            self.on_event(event["type"], event["object"], received)
                    if self.stopped.is_set():
                        break
                response.release_conn()
            except (urllib3.exceptions.HTTPError, OSError, ValueError):
                if self.stopped.is_set():
                    return
                time.sleep(0.5)


@dataclass
class Timeline:
    """First time each pod was seen, when it was first Running, and when each job was first Running."""

    pods_seen: dict[str, float] = field(default_factory=dict)
    pod_running: dict[str, float] = field(default_factory=dict)
    pod_job: dict[str, str] = field(default_factory=dict)
    job_running: dict[str, float] = field(default_factory=dict)
    job_succeeded: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_pod(self, type_: str, pod: dict, at: float) -> None:
        name = pod["metadata"]["name"]
        with self.lock:
            self.pods_seen.setdefault(name, at)
            self.pod_job[name] = (pod["metadata"].get("labels") or {}).get("llmtraining.dev/job-name", "")
            if (pod.get("status") or {}).get("phase") == "Running" and type_ != "DELETED":
                self.pod_running.setdefault(name, at)

    def on_job(self, type_: str, job: dict, at: float) -> None:
        phase = (job.get("status") or {}).get("phase")
        if phase in ("Running", "Succeeded"):
            with self.lock:
                (self.job_running if phase == "Running" else self.job_succeeded).setdefault(job["metadata"]["name"], at)

    def running_lags(self) -> list[float]:
        """Per job: when it showed Running minus when its last pod showed Running."""
        with self.lock:
            last_pod: dict[str, float] = {}
            for pod, at in self.pod_running.items():
                job = self.pod_job[pod]
                last_pod[job] = max(last_pod.get(job, at), at)
            return [at - last_pod[job] for job, at in self.job_running.items() if job in last_pod]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until predicate() holds; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def _when(event: dict) -> float:
    return datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()


def count_requests(audit_log: Path, user: str, since: float, until: Optional[float] = None,
                   skip_namespaces: frozenset[str] = frozenset()) -> Counter:
    """Requests of `user` received in [since, until) (wall-clock seconds), by 'verb resource[/subresource]'.
    A watch is logged when it starts and again when it ends: counted once (by auditID)."""
    counts: Counter = Counter()
    seen: set[str] = set()
    with open(audit_log, encoding="utf-8") as lines:
        for line in lines:
            event: dict[str, Any] = json.loads(line)
            if event.get("user", {}).get("username") != user or event["auditID"] in seen:
                continue
            when = _when(event)
            ref = event.get("objectRef") or {}
            if when < since or (until is not None and when >= until) or ref.get("namespace") in skip_namespaces:
                continue
            seen.add(event["auditID"])
            resource = ref.get("resource", event.get("requestURI", "?"))
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            # a dry run (the operator's start-up discovery) persists nothing: counted apart from the writes
            verb = f"dry-run-{event['verb']}" if "dryRun=All" in event.get("requestURI", "") else event["verb"]
            counts[f"{verb} {resource}"] += 1
    return counts


def split_reads_writes(counts: Counter) -> tuple[int, int]:
    writes = sum(n for key, n in counts.items() if key.split()[0] in WRITE_VERBS)
    return sum(counts.values()) - writes, writes
