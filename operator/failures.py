"""Why a worker failed (the root cause shown in status.failure) and what the job's podFailurePolicy makes of
it: FailJob, Ignore (restart for free) or Count (restart, toward backoffLimit). Pure."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Optional

from .api.contract import EXIT_BAD_INPUT, strip_final_state
from .api.v1alpha1 import PodFailureRule
from .clock import parse_time, rfc3339
from .pods import DISRUPTION_TARGET, Pod, condition, exit_code_of, is_disrupted, name_of, node_rank, terminated_state

Action = Literal["FailJob", "Ignore", "Count"]

# torch raises DistBackendError for NCCL failures; NCCL's own messages name it.
NCCL_ERROR = re.compile(r"NCCL|DistBackendError")
# How a rank fails when a peer vanished (killed, OOM, node gone): gloo's and NCCL's words for a lost
# connection or a collective the peer never joined. Such a failure is a victim; the peer's own is the cause.
PEER_LOST = re.compile(r"connection (reset|closed) by peer|broken pipe|remote process exited|DistNetworkError"
                       r"|communicator was aborted|watchdog.{0,60}time ?out", re.IGNORECASE)
# DisruptionTarget reasons (k8s.io/api/core/v1) → our root cause.
DISRUPTION_CAUSES = {
    "PreemptionByScheduler": "Preempted",
    "DeletionByTaintManager": "NodeLost",
    "DeletionByPodGC": "NodeLost",
    "EvictionByEvictionAPI": "Evicted",
    "TerminationByKubelet": "Evicted",
}


_UNKNOWN_TIME = datetime.max.replace(tzinfo=timezone.utc)  # sorts after every known time


@dataclass(frozen=True)
class Failure:
    reason: str  # the root cause: OOMKilled, Evicted, Preempted, NodeLost, PodDeleted, NCCLError, InvalidInput, UserError, Stalled, Error…
    message: str
    pod: Optional[str] = None
    rank: Optional[int] = None
    node: Optional[str] = None
    exit_code: Optional[int] = None
    at: Optional[datetime] = None  # when it happened, to find the first of several
    conditions: frozenset[tuple[str, str]] = field(default_factory=frozenset)  # what onPodConditions rules see
    matches_rules: bool = True  # False for a stall: not a pod failure, always counted

    def to_status(self, now: datetime) -> dict[str, Any]:
        entry = {"pod": self.pod, "rank": self.rank, "node": self.node, "exitCode": self.exit_code,
                 "reason": self.reason, "message": self.message[-1024:] or None, "time": rfc3339(now)}
        return {k: v for k, v in entry.items() if v is not None}

    def describe(self) -> str:
        who = f"worker {self.pod} (node rank {self.rank})" if self.pod else "the gang"
        code = f" with exit code {self.exit_code}" if self.exit_code is not None else ""
        return f"{who} failed{code}: {self.reason}" + (f": {self.message}" if self.message else "")


def _pod_facts(pod: Pod) -> dict[str, Any]:
    conditions = frozenset((c.get("type", ""), c.get("status", "")) for c in (pod.get("status") or {}).get("conditions") or [])
    return {"pod": name_of(pod), "rank": node_rank(pod), "node": (pod.get("spec") or {}).get("nodeName"), "conditions": conditions}


def failed_pod(pod: Pod) -> Failure:
    """A worker pod in phase Failed, or carrying DisruptionTarget (being preempted or evicted)."""
    terminated = terminated_state(pod)
    status = pod.get("status") or {}
    disruption = condition(pod, DISRUPTION_TARGET) if is_disrupted(pod) else None
    message = (strip_final_state(terminated.get("message")) or status.get("message") or (disruption or {}).get("message") or "").strip()
    if terminated.get("reason") == "OOMKilled":
        reason = "OOMKilled"
    elif disruption is not None:
        reason = DISRUPTION_CAUSES.get(disruption.get("reason", ""), "Evicted")
    elif status.get("reason") in ("Evicted", "NodeLost"):
        reason = status["reason"]
    elif NCCL_ERROR.search(message):
        reason = "NCCLError"
    elif exit_code_of(pod) == EXIT_BAD_INPUT:
        reason = "InvalidInput"  # the launcher's pre-flight check of the input files; the message names field and file
    else:
        reason = "Error"
    at = parse_time(terminated.get("finishedAt")) or parse_time((disruption or {}).get("lastTransitionTime"))
    return Failure(reason=reason, message=message, exit_code=exit_code_of(pod), at=at, **_pod_facts(pod))


def deleted_pod(pod: Pod) -> Failure:
    """A worker of the running gang being deleted by someone else (a person, a drain, a controller)."""
    if is_disrupted(pod):
        return failed_pod(pod)
    facts = _pod_facts(pod)
    facts["conditions"] = facts["conditions"] | {(DISRUPTION_TARGET, "True")}
    return Failure(reason="PodDeleted", message=f"worker pod {name_of(pod)} was deleted while the job was running",
                   at=parse_time(pod["metadata"].get("deletionTimestamp")), **facts)


def vanished_pod(name: str, rank: int) -> Failure:
    """A worker of the running gang that is gone without the operator deleting it."""
    return Failure(reason="PodDeleted", message=f"worker pod {name} disappeared while the job was running (deleted or evicted)",
                   pod=name, rank=rank, conditions=frozenset({(DISRUPTION_TARGET, "True")}))


def node_lost(pod: Pod, since: datetime, grace_seconds: float) -> Failure:
    facts = _pod_facts(pod)
    facts["conditions"] = facts["conditions"] | {(DISRUPTION_TARGET, "True")}
    return Failure(reason="NodeLost", message=f"node {facts['node']} of worker {name_of(pod)} stopped reporting "
                   f"(not ready since {rfc3339(since)}, more than {grace_seconds:.0f} s)", at=since, **facts)


def stalled(pod: Optional[Pod], message: str) -> Failure:
    facts = _pod_facts(pod) if pod is not None else {}
    facts.pop("conditions", None)
    return Failure(reason="Stalled", message=message, matches_rules=False, **facts)


def lost_a_peer(failure: Failure) -> bool:
    """The rank failed because another went away: its message is gloo's or NCCL's word for a lost peer."""
    return bool(PEER_LOST.search(failure.message))


def first_of(failures: list[Failure]) -> Failure:
    """The cause: a failure that is not a lost peer before one that is (the victims of a killed rank fail in the
    same second as it, often before its pod reports), then the first to fail."""
    return min(failures, key=lambda f: (lost_a_peer(f), f.at or _UNKNOWN_TIME, f.rank if f.rank is not None else 0))


def _matches(rule: PodFailureRule, failure: Failure) -> bool:
    if rule.on_exit_codes is not None:
        code = failure.exit_code
        if code is None or code == 0:
            return False
        listed = code in rule.on_exit_codes.values
        return listed if rule.on_exit_codes.operator == "In" else not listed
    return any((c.type, c.status) in failure.conditions for c in rule.on_pod_conditions or [])


def action_for(rules: list[PodFailureRule], failure: Failure) -> tuple[Action, Failure]:
    """The first matching rule's action (Count when none matches), and the failure as reported: a FailJob
    matched on the exit code of a plain error is the user's (UserError)."""
    if not failure.matches_rules:
        return "Count", failure
    for rule in rules:
        if _matches(rule, failure):
            if rule.action == "FailJob" and rule.on_exit_codes is not None and failure.reason == "Error":
                failure = dataclasses.replace(failure, reason="UserError")
            return rule.action, failure
    return "Count", failure
