"""From the pods a job owns to the job's status: phase, conditions, progress, failure. Pure.

The phase only moves forward: Pending → Created → Running → Succeeded | Failed. Conditions keep
their lastTransitionTime unless their status changes, so an unchanged world yields an identical
status and the operator writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .api import LLMTrainingJob
from .render.names import NODE_RANK_LABEL, TRAINER_CONTAINER, checkpoint_dir

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Observation:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status.get("phase") in TERMINAL_PHASES


def node_rank(pod: Mapping[str, Any]) -> int:
    return int(pod["metadata"].get("labels", {}).get(NODE_RANK_LABEL, -1))


def is_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    return status.get("phase") == "Running" and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _terminated(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer container's terminated state (or the first terminated container's)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    ordered = sorted(statuses, key=lambda s: s.get("name") != TRAINER_CONTAINER)
    for container in ordered:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return terminated
    return {}


def failure_of(pod: Mapping[str, Any]) -> dict[str, Any]:
    terminated = _terminated(pod)
    status = pod.get("status") or {}
    failure = {
        "rank": node_rank(pod),
        "pod": pod["metadata"]["name"],
        "node": (pod.get("spec") or {}).get("nodeName"),
        "exitCode": terminated.get("exitCode"),
        "reason": terminated.get("reason") or status.get("reason") or "Failed",
        "message": (terminated.get("message") or status.get("message") or "").strip()[-1024:] or None,
    }
    return {k: v for k, v in failure.items() if v is not None}


def _progress(job: LLMTrainingJob, reported: Mapping[str, Any] | None, previous: Mapping[str, Any] | None) -> tuple[dict, dict | None]:
    """Progress as last read from rank 0's metrics (see progress.py); the previous one until then."""
    total = job.spec.training.steps
    if not reported:
        return dict(previous or {"step": 0}, totalSteps=total, stepOfTotal=f"{(previous or {}).get('step', 0)}/{total}"), None
    step = int(reported.get("step", 0))
    progress = {"step": step, "totalSteps": total, "stepOfTotal": f"{step}/{total}"}
    progress.update({k: reported[k] for k in ("loss", "tokensPerSecond", "mfu") if k in reported})
    checkpoint = None
    if reported.get("lastCheckpointStep"):
        ckpt_step = int(reported["lastCheckpointStep"])
        checkpoint = {"step": ckpt_step, "tag": f"global_step{ckpt_step}", "path": f"{checkpoint_dir(job)}/global_step{ckpt_step}"}
    return progress, checkpoint


def set_condition(conditions: list[dict], type_: str, status: str, reason: str, message: str, now: str, generation: int | None) -> bool:
    """Upsert a condition; lastTransitionTime moves only when status does. Returns whether status changed."""
    for condition in conditions:
        if condition["type"] == type_:
            changed = condition["status"] != status
            if changed:
                condition["lastTransitionTime"] = now
            condition.update(status=status, reason=reason, message=message)
            if generation is not None:
                condition["observedGeneration"] = generation
            return changed
    entry = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now}
    if generation is not None:
        entry["observedGeneration"] = generation
    conditions.append(entry)
    return status == "True"


def observe(job: LLMTrainingJob, generation: int | None, pods: Iterable[Mapping[str, Any]], previous: Mapping[str, Any] | None, now: str,
            reported: Mapping[str, Any] | None = None) -> Observation:
    """reported: rank 0's latest training metrics, if the operator could read them."""
    previous = dict(previous or {})
    pods = sorted((p for p in pods if not p["metadata"].get("deletionTimestamp")), key=node_rank)
    nodes = job.spec.nodes
    conditions = [dict(c) for c in previous.get("conditions") or []]
    events: list[Event] = []
    phase = previous.get("phase") or "Pending"
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "restarts": previous.get("restarts", 0),
    }
    ready = sum(1 for p in pods if is_ready(p))
    status["readyNodes"] = ready
    status["nodesReady"] = f"{ready}/{nodes}"
    status["startTime"] = previous.get("startTime") or (now if pods else None)
    status["completionTime"] = previous.get("completionTime")
    status["failure"] = previous.get("failure")
    status["progress"], checkpoint = _progress(job, reported, previous.get("progress"))
    status["lastCheckpoint"] = checkpoint or previous.get("lastCheckpoint")

    def transition(type_: str, cond_status: str, reason: str, message: str, event_type: str = "Normal") -> None:
        if set_condition(conditions, type_, cond_status, reason, message, now, generation) and cond_status == "True":
            events.append(Event(event_type, reason, message))

    if phase not in TERMINAL_PHASES:
        by_phase = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in pods}
        failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
        launcher_done = job.spec.launcher.mode == "ssh" and any(node_rank(p) == 0 and by_phase[p["metadata"]["name"]] == "Succeeded" for p in pods)
        all_done = len(pods) == nodes and all(v == "Succeeded" for v in by_phase.values())
        if pods:
            transition("Created", "True", "PodsCreated", f"{len(pods)}/{nodes} worker pods created")
            phase = "Created" if phase == "Pending" else phase
        if failed:
            # The first to fail is the likely cause; later failures are often its victims (NCCL errors).
            first = min(failed, key=lambda p: (_terminated(p).get("finishedAt") or "~", node_rank(p)))
            failure = failure_of(first)
            status["failure"] = failure
            message = f"worker {failure['pod']} (node rank {failure['rank']}) failed"
            if "exitCode" in failure:
                message += f" with exit code {failure['exitCode']}"
            message += f": {failure['reason']}"
            phase = "Failed"
            transition("Running", "False", "WorkerFailed", message)
            transition("Failed", "True", "WorkerFailed", message, "Warning")
        elif phase == "Running" and len(pods) < nodes:
            present = {p["metadata"]["name"] for p in pods}
            missing = sorted(set(f"{job.metadata.name}-worker-{i}" for i in range(nodes)) - present)
            message = f"worker pod {missing[0]} disappeared while the job was running (deleted or evicted)"
            status["failure"] = {"pod": missing[0], "rank": int(missing[0].rsplit("-", 1)[1]), "reason": "PodDeleted", "message": message}
            phase = "Failed"
            transition("Running", "False", "WorkerDeleted", message)
            transition("Failed", "True", "WorkerDeleted", message, "Warning")
        elif all_done or launcher_done:
            phase = "Succeeded"
            message = "training finished: " + ("the launcher (worker 0) exited 0" if launcher_done and not all_done else f"all {nodes} workers exited 0")
            transition("Running", "False", "JobSucceeded", message)
            transition("Succeeded", "True", "JobSucceeded", message)
            total = job.spec.training.steps  # the last scrape usually predates the last step
            status["progress"] = {**status["progress"], "step": total, "stepOfTotal": f"{total}/{total}"}
        elif len(pods) == nodes and all(v == "Running" for v in by_phase.values()):
            phase = "Running"
            transition("Running", "True", "AllWorkersRunning", f"all {nodes} workers running")
        if phase in TERMINAL_PHASES:
            status["completionTime"] = now

    status["phase"] = phase
    status["conditions"] = conditions
    return Observation(status={k: v for k, v in status.items() if v is not None}, events=events)


def status_changed(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    current = current or {}
    return any(current.get(key) != value for key, value in desired.items())
