"""Leader election decisions on a coordination.k8s.io/v1 Lease: pure functions of the Lease as read, the
replica's identity and its clocks, with client-go's semantics (tools/leaderelection, which
controller-runtime uses). The actions (reading and writing the Lease) are in leader_election.py.

Expiry is judged as client-go does, by the local monotonic clock: a Lease is taken over when its record has
not changed for leaseDurationSeconds since this replica first saw it so, never by comparing its renewTime with
the local wall clock (the replicas' clocks may disagree; each one's own clock only measures its own waiting).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

LEASE_NAME = "llm-training-operator"
JITTER = 0.1  # a standby's wait between tries: retry period × [1, 1 + JITTER] (client-go: 1.2; less keeps hand-over ≤ 3 s)


@dataclass(frozen=True)
class Timing:
    """controller-runtime's defaults: a Lease lasts 15 s; its leader renews every 2 s and gives up (stops, exits)
    when it could not renew for 10 s, 5 s before a standby may take the Lease over."""

    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.lease_seconds < 1 or self.lease_seconds != int(self.lease_seconds):
            raise ValueError(f"lease duration must be a whole number of seconds, at least 1 (the Lease's leaseDurationSeconds): "
                             f"{self.lease_seconds}")
        if not self.lease_seconds > self.renew_deadline_seconds:
            raise ValueError(f"lease duration ({self.lease_seconds} s) must exceed the renew deadline ({self.renew_deadline_seconds} s)")
        if not self.renew_deadline_seconds > self.retry_seconds * (1 + JITTER):
            raise ValueError(f"renew deadline ({self.renew_deadline_seconds} s) must exceed the retry period with jitter "
                             f"({self.retry_seconds} s × {1 + JITTER})")
        if self.retry_seconds <= 0:
            raise ValueError("retry period must be positive")


@dataclass(frozen=True)
class Record:
    """The Lease's spec as read (the fields leader election uses) and the resourceVersion it was read at."""

    holder: str
    lease_seconds: int
    acquire_time: Optional[str]
    renew_time: Optional[str]
    transitions: int
    resource_version: str

    @classmethod
    def of(cls, lease: Mapping[str, Any]) -> "Record":
        spec = lease.get("spec") or {}
        return cls(holder=spec.get("holderIdentity") or "", lease_seconds=int(spec.get("leaseDurationSeconds") or 0),
                   acquire_time=spec.get("acquireTime"), renew_time=spec.get("renewTime"),
                   transitions=int(spec.get("leaseTransitions") or 0),
                   resource_version=(lease.get("metadata") or {}).get("resourceVersion", ""))

    def same_term(self, other: "Record") -> bool:
        """Nothing a holder writes has changed (the resourceVersion aside: it is not the record)."""
        return (self.holder, self.lease_seconds, self.acquire_time, self.renew_time, self.transitions) == \
               (other.holder, other.lease_seconds, other.acquire_time, other.renew_time, other.transitions)


@dataclass(frozen=True)
class Observation:
    """A Lease record and the local monotonic time at which this replica first saw it (unchanged since)."""

    record: Record
    seen_at: float


def observe(previous: Optional[Observation], record: Record, now: float) -> Observation:
    """The new observation after reading `record` at monotonic time `now`: the clock restarts only when the
    record changed (a renewal, a new holder, a release)."""
    if previous is not None and previous.record.same_term(record):
        return Observation(record, previous.seen_at)
    return Observation(record, now)


def may_take(observation: Observation, identity: str, now: float) -> bool:
    """Whether this replica may write itself into the Lease: it is free (released), it holds it already, or its
    holder has not renewed it for its whole duration, as measured here."""
    record = observation.record
    if not record.holder or record.holder == identity:
        return True
    return now >= observation.seen_at + record.lease_seconds


def claim(record: Optional[Record], identity: str, timing: Timing, wall: datetime) -> dict[str, Any]:
    """The Lease spec that acquires (record None: the Lease does not exist yet) or renews it for `identity`."""
    stamp = micro_time(wall)
    spec: dict[str, Any] = {"holderIdentity": identity, "leaseDurationSeconds": int(timing.lease_seconds), "renewTime": stamp}
    if record is not None and record.holder == identity:  # a renewal: the same term
        spec.update(acquireTime=record.acquire_time or stamp, leaseTransitions=record.transitions)
    else:  # a new term; a Lease created now has had no transition yet
        spec.update(acquireTime=stamp, leaseTransitions=record.transitions + 1 if record is not None else 0)
    return spec


def release(record: Record, wall: datetime) -> dict[str, Any]:
    """The spec that gives the Lease up at once, as client-go's ReleaseOnCancel writes it: no holder, a
    duration of 1 s (for candidates that judge by the duration alone), the transitions kept."""
    stamp = micro_time(wall)
    return {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": stamp, "renewTime": stamp,
            "leaseTransitions": record.transitions}


def renewal_overdue(last_renewed: float, now: float, timing: Timing) -> bool:
    """A leader that has not renewed for the renew deadline must stop: a standby may take over soon after."""
    return now - last_renewed >= timing.renew_deadline_seconds


def standby_wait(timing: Timing, rand: random.Random | None = None) -> float:
    """Seconds between a standby's tries: jittered, so standbys started together do not try in lockstep."""
    return timing.retry_seconds * (1 + JITTER * (rand or random).random())


def micro_time(moment: datetime) -> str:
    """A Lease's MicroTime (RFC 3339 with microseconds, UTC)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
