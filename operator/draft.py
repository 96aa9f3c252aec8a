"""The decision's working state: the status being decided with its condition setters (Draft), what the decision
asks reconcile.py to do (Decision, Event), and the operator-wide timings it is decided with (LifecycleSettings)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Optional, Sequence

from .api import LLMTrainingJob
from .clock import parse_time, rfc3339
from .conditions import find, set_condition
from .health import set_health_conditions
from .pods import Pod, is_terminating, name_of

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class LifecycleSettings:
    """Operator-wide timings (command-line flags), not part of the API."""

    restart_backoff_seconds: float = 10.0  # first counted restart; doubles with each one
    restart_backoff_max_seconds: float = 300.0
    node_lost_grace_seconds: float = 60.0  # a running worker not Ready this long has lost its node
    peer_loss_wait_seconds: float = 15.0  # a rank that lost a peer waits this long for the peer's own failure
    kueue: bool = False  # --kueue: jobs labelled kueue.x-k8s.io/queue-name wait for Kueue's admission


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    create_pods: bool = False  # create the missing pods of gang status.restarts
    delete_pods: list[str] = field(default_factory=list)  # stop these: SIGTERM, then SIGKILL after their grace period
    delete_job: bool = False  # ttlSecondsAfterFinished has passed
    wake_after: Optional[float] = None  # seconds until a timer may fire with no event in between
    create_workload: bool = False  # Kueue: create the job's Workload (kueue.build_workload)
    workload_patch: Optional[dict[str, Any]] = None  # Kueue: a merge patch of the Workload (release quota, finished)
    delete_workload: bool = False  # Kueue: the job is suspended; its Workload goes (a new one on resume)

    @property
    def finished(self) -> bool:
        return self.status.get("phase") in TERMINAL_PHASES


def restart_backoff(counted_restarts: int, settings: LifecycleSettings) -> float:
    """Exponential and capped, like a Job's pod backoff: a crash loop must not hammer the scheduler."""
    if counted_restarts <= 0:
        return 0.0
    return min(settings.restart_backoff_seconds * 2 ** (counted_restarts - 1), settings.restart_backoff_max_seconds)


class Draft:
    """The status being decided, and the condition setters that emit an Event on a transition."""

    def __init__(self, job: LLMTrainingJob, generation: Optional[int], previous: Mapping[str, Any], now: datetime):
        self.job, self.now, self.stamp, self.generation = job, now, rfc3339(now), generation
        self.previous = dict(previous)
        self.status: dict[str, Any] = {k: v for k, v in previous.items() if k != "conditions"}
        self.status["observedGeneration"] = generation
        self.status.setdefault("restarts", 0)
        self.status.setdefault("countedRestarts", 0)
        self.conditions = [dict(c) for c in previous.get("conditions") or []]
        self.events: list[Event] = []
        self.phase: str = previous.get("phase") or "Pending"
        self.wakes: list[datetime] = []
        self.final_state: Optional[dict[str, Any]] = None  # worker 0's termination message, once training ended
        self.delete: list[str] = []

    # ---------------------------------------------------------------------------------- reading
    @property
    def restarts(self) -> int:
        return int(self.status["restarts"])

    def time(self, key: str) -> Optional[datetime]:
        return parse_time(self.status.get(key))

    def since(self, condition_type: str) -> Optional[datetime]:
        """When a condition became True (None unless it is True)."""
        found = find(self.conditions, condition_type)
        return parse_time(found.get("lastTransitionTime")) if found and found["status"] == "True" else None

    # ---------------------------------------------------------------------------------- writing
    def condition(self, type_: str, status: str, reason: str, message: str, event: Optional[str] = "Normal") -> None:
        if set_condition(self.conditions, type_, status, reason, message, self.stamp, self.generation) and status == "True" and event:
            self.events.append(Event(event, reason, message))

    def clear(self, type_: str, reason: str, message: str) -> None:
        """Set a condition False, if it exists (no condition is better than a pile of False ones)."""
        if find(self.conditions, type_) is not None:
            self.condition(type_, "False", reason, message)

    def wake_at(self, moment: datetime) -> None:
        self.wakes.append(moment)

    def stop(self, pods: Sequence[Pod]) -> None:
        self.delete += [name_of(p) for p in pods if not is_terminating(p) and name_of(p) not in self.delete]

    def decision(self, **actions: Any) -> Decision:
        self.status["phase"] = self.phase
        set_health_conditions(self.conditions, self.phase, self.stamp, self.generation)
        self.status["conditions"] = self.conditions
        wake = min(self.wakes, default=None)
        wake_after = max(0.0, (wake - self.now).total_seconds()) if wake else None
        status = {k: v for k, v in self.status.items() if v is not None}
        return Decision(status=status, events=self.events, delete_pods=self.delete, wake_after=wake_after, **actions)
