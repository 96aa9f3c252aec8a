"""Leader election among the operator's replicas through the Lease `llm-training-operator` (lease.py holds the
decisions; this module reads and writes the Lease and runs the elector).

Why not the kubernetes client's `kubernetes.leaderelection` (read in the pinned client, 37.0.2): its
LeaderElection cannot give the Lease up (no ReleaseOnCancel: a rolling upgrade would wait out the lease
duration), judges expiry and the renew deadline with `time.time()` (a wall-clock step makes a standby take a
live Lease, or a leader miss its deadline), sends its requests with no timeout (a hung renewal passes the renew
deadline unnoticed), and its LeaseLock builds its own `CoordinationV1Api()` on the default ApiClient (no
per-replica User-Agent) and drops leaseTransitions. What is kept, from it and from client-go, is the protocol:
the record's fields, optimistic concurrency on resourceVersion (a PUT with the resourceVersion read; 409:
someone else wrote), expiry by the time this replica has seen the record unchanged.

The elector runs in its own thread with its own API connection, so a busy event loop (a burst of thousands
of watch events) never delays a renewal. A leader that sees another holder, or cannot renew for the renew
deadline, has lost: on_lost (by default: shut the write gate and exit at once, as controller-runtime does).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Callable, Optional

from kubernetes.client.exceptions import ApiException

from . import lease
from .kube import Kube
from .lease import Observation, Record, Timing

log = logging.getLogger(__name__)

DEFAULT_TIMING = Timing()
DRAIN_SECONDS = 2.0  # stepping down: how long to wait for the writes in flight before giving the Lease up


class Attempt(Enum):
    HELD = "held"  # this replica holds the Lease (acquired or renewed)
    TAKEN = "taken"  # another replica holds it, unexpired (or wrote it between our read and our write)
    FAILED = "failed"  # the API server did not answer (or refused): nothing is known


def lease_path(namespace: str, name: str | None = None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{path}/{name}" if name else path


class Elector:
    def __init__(self, kube: Kube, namespace: str, identity: str, *, timing: Timing = DEFAULT_TIMING, name: str = lease.LEASE_NAME,
                 on_started: Callable[[], None] = lambda: None, on_lost: Callable[[], None] = lambda: None,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        """kube: a client of its own (no write gate: the Lease is written before this replica leads).
        on_started: called in the elector's thread once it leads; on_lost: once it has lost the Lease."""
        self.kube, self.namespace, self.identity, self.timing, self.name = kube, namespace, identity, timing, name
        self.on_started, self.on_lost = on_started, on_lost
        self.monotonic, self.wall = monotonic, wall
        self.leading = threading.Event()
        self._stopping = threading.Event()
        self._lease_lock = threading.Lock()  # one Lease request sequence at a time: a renewal never races the release
        self._observation: Optional[Observation] = None
        self.last_renewed = 0.0
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------------------------- the loop
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        """Acquire (trying every retry period), then renew until stopped or lost."""
        log.info("leader election: %s is a candidate for Lease %s/%s", self.identity, self.namespace, self.name)
        while True:
            with self._lease_lock:
                if self._stopping.is_set():
                    return
                if self.try_acquire_or_renew() is Attempt.HELD:
                    self.last_renewed = self.monotonic()
                    self.leading.set()
                    break
            if self._stopping.wait(lease.standby_wait(self.timing)):
                return
        log.info("leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name)
        self.on_started()
        self._renew_until_lost()

    def _renew_until_lost(self) -> None:
        while not self._stopping.wait(self.timing.retry_seconds):
            with self._lease_lock:
                if self._stopping.is_set():
                    return
                attempt = self.try_acquire_or_renew()
                if attempt is Attempt.HELD:
                    self.last_renewed = self.monotonic()
                    continue
                if attempt is Attempt.FAILED and not lease.renewal_overdue(self.last_renewed, self.monotonic(), self.timing):
                    continue
                self.leading.clear()
            holder = self._observation.record.holder if self._observation else "?"
            log.error("leader election: %s lost the Lease (%s)", self.identity,
                      f"now held by {holder}" if attempt is Attempt.TAKEN else
                      f"not renewed for {self.timing.renew_deadline_seconds:.0f} s")
            self.on_lost()
            return

    # --------------------------------------------------------------------------------- one attempt
    def try_acquire_or_renew(self) -> Attempt:
        """Read the Lease; write this replica into it where lease.may_take allows (create it if absent)."""
        timeout = self._request_timeout()
        try:
            try:
                current = self.kube.request("GET", lease_path(self.namespace, self.name), timeout=timeout)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return self._create(timeout)
            record = Record.of(current)
            now = self.monotonic()
            self._observation = lease.observe(self._observation, record, now)
            if not lease.may_take(self._observation, self.identity, now):
                return Attempt.TAKEN
            current["spec"] = lease.claim(record, self.identity, self.timing, self.wall())
            written = self.kube.request("PUT", lease_path(self.namespace, self.name), current, timeout=timeout)
        except ApiException as exc:
            if exc.status == 409:  # another replica wrote (or created) the Lease since we read it
                return Attempt.TAKEN
            log.warning("leader election: Lease request failed: %s %s", exc.status, exc.reason)
            return Attempt.FAILED
        except Exception as exc:  # the API server unreachable, a timeout
            log.warning("leader election: Lease request failed: %s", exc)
            return Attempt.FAILED
        self._observation = lease.observe(self._observation, Record.of(written), self.monotonic())
        return Attempt.HELD

    def _create(self, timeout: tuple[float, float]) -> Attempt:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": lease.claim(None, self.identity, self.timing, self.wall())}
        created = self.kube.request("POST", lease_path(self.namespace), body, timeout=timeout)
        self._observation = lease.observe(None, Record.of(created), self.monotonic())
        return Attempt.HELD

    def _request_timeout(self) -> tuple[float, float]:
        """A leader's request must end before its renew deadline; a standby's within a retry period or two."""
        if self.leading.is_set():
            left = self.timing.renew_deadline_seconds - (self.monotonic() - self.last_renewed)
        else:
            left = 2 * self.timing.retry_seconds
        left = max(0.5, left)
        return (min(left, 2.0), left)

    # ------------------------------------------------------------------------------------ stepping down
    def stop_and_release(self, before_release: Callable[[], None] = lambda: None) -> bool:
        """Stop taking part; if leading, stop leading, call before_release (shut the writes, wait for those in
        flight), then give the Lease up at once (client-go's ReleaseOnCancel), so that a standby takes over in
        about one retry period. True if the Lease was released."""
        self._stopping.set()
        with self._lease_lock:
            if not self.leading.is_set():
                return False
            self.leading.clear()
            before_release()
            try:
                current = self.kube.request("GET", lease_path(self.namespace, self.name), timeout=(2.0, 3.0))
                record = Record.of(current)
                if record.holder != self.identity:
                    return False
                current["spec"] = lease.release(record, self.wall())
                self.kube.request("PUT", lease_path(self.namespace, self.name), current, timeout=(2.0, 3.0))
            except Exception as exc:  # the standby takes over when the Lease expires instead
                log.warning("leader election: could not release the Lease: %s", exc)
                return False
        log.info("leader election: %s released the Lease", self.identity)
        return True

    def status(self) -> dict[str, Any]:
        return {"identity": self.identity, "leading": self.leading.is_set(), "elector": "running" if self.alive else "stopped"}
