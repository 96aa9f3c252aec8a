"""What the operator's replicas did, read from the API server's audit log (LLMTO_CP_AUDIT=1, metadata only:
hack/controlplane/audit-policy.yaml). Every replica sends `llm-training-operator/<version> (<identity>)` as its
User-Agent (operator/replica.py), so the log tells which replica wrote what and when."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
OPERATOR_AGENT = re.compile(r"llm-training-operator/\S+ \((?P<identity>[^)]*)\)")


@dataclass(frozen=True)
class Write:
    """One write the API server received (dry runs excluded: they persist nothing)."""

    identity: str  # the replica's leader-election identity, from its User-Agent; "" for anyone else
    user_agent: str
    received: float  # requestReceivedTimestamp, as a Unix time
    verb: str
    resource: str
    namespace: str
    name: str
    code: int  # the response status (201 for a create that made something)

    def __str__(self) -> str:
        return f"{self.verb} {self.resource} {self.name}".rstrip()


def unix_time(stamp: str) -> float:
    """An API server timestamp (RFC 3339, `Z` or an offset) as a Unix time."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _events(audit_log: Path) -> Iterator[dict]:
    """Each request once, at its last stage (ResponseComplete; a watch also logs ResponseStarted)."""
    last: dict[str, dict] = {}
    for line in audit_log.read_text(errors="replace").splitlines():
        event = json.loads(line)
        if event.get("stage") in ("ResponseComplete", "Panic") or event["auditID"] not in last:
            last[event["auditID"]] = event
    yield from last.values()


def writes(audit_log: Path) -> list[Write]:
    found = []
    for event in _events(audit_log):
        if event.get("verb") not in WRITE_VERBS or "dryRun=All" in event.get("requestURI", ""):
            continue
        ref = event.get("objectRef") or {}
        agent = event.get("userAgent", "")
        match = OPERATOR_AGENT.search(agent)
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        found.append(Write(identity=match["identity"] if match else "", user_agent=agent,
                           received=unix_time(event["requestReceivedTimestamp"]),
                           verb=event["verb"], resource=resource, namespace=ref.get("namespace", ""), name=ref.get("name", ""),
                           code=(event.get("responseStatus") or {}).get("code", 0)))
    return sorted(found, key=lambda w: w.received)


def audit_writes(audit_log: Path, agent_part: str, until_wall: float) -> list[str]:
    """The writes (not to the Lease) whose User-Agent contains agent_part, received before until_wall."""
    return [str(w) for w in writes(audit_log)
            if agent_part in w.user_agent and w.received < until_wall and w.resource != "leases"]


def creates_by_name(audit_log: Path, namespace: str, resource: str) -> Counter[str]:
    """The objects of `resource` (e.g. pods) the operator's replicas created in `namespace`, by name (201s only: an
    AlreadyExists made nothing)."""
    return Counter(w.name for w in writes(audit_log)
                   if w.identity and w.verb == "create" and w.resource == resource and w.namespace == namespace and w.code == 201)


def pod_creates_by_name(audit_log: Path, namespace: str) -> Counter[str]:
    return creates_by_name(audit_log, namespace, "pods")


def pod_creates(audit_log: Path, namespace: str) -> int:
    """How many pods the operator's replicas created in `namespace`."""
    return sum(pod_creates_by_name(audit_log, namespace).values())
