"""What the operator does next for one job: a pure function of the job, its pods, the previous status, the
clock and rank 0's latest metrics. reconcile.py carries the decision out; tests/unit/test_lifecycle.py
tables every transition.

    Pending → Created → Running → Succeeded
                ↑          │ a worker fails, is deleted or preempted, loses its node, or the step stalls
                └── Restarting: stop the whole gang; once every old pod is gone and the backoff has
                    passed, create the next gang (pods labelled with the new restart count)
    any → Failed: a FailJob rule, backoffLimit spent, activeDeadlineSeconds passed
    any → Suspended while runPolicy.suspend (the gang stopped, the deadline clock paused) → a new gang on resume
    Kueue (queueing.py, kueue.py): a job labelled kueue.x-k8s.io/queue-name stays Pending, condition Queued,
    with no pods until its Workload is admitted; evicted (preempted), its gang is stopped as on suspend and it
    queues again.

The working state (Draft, Decision, Event) is draft.py's. The status is the only memory: it is written before
pods are stopped, so an operator killed at any point finds the restart count it decided and converges to
exactly one gang.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Mapping, Optional, Sequence

from .api import LLMTrainingJob
from .api.contract import EARLY_STOPPED, parse_final_state
from .clock import parse_time, rfc3339, seconds_between
from .conditions import (CREATED, FAILED, GANG_SCHEDULED, PROGRESS_STALLED, QUEUED, RESTARTING, RUNNING, SUCCEEDED, SUSPENDED,
                         TOPOLOGY_PLACED, find, is_true)
from .draft import TERMINAL_PHASES, Decision, Draft, Event, LifecycleSettings, restart_backoff
from .failures import Failure, action_for, deleted_pod, failed_pod, first_of, lost_a_peer, node_lost, stalled, vanished_pod
from .kueue import admission_of
from .pods import (
    Pod,
    has_failed,
    has_succeeded,
    is_disrupted,
    is_finished,
    is_ready,
    is_running,
    is_terminating,
    name_of,
    node_rank,
    not_ready_since,
    restart_of,
    terminated_state,
)
from .queueing import admitted, queued_by_kueue, settle_workload, wait_for_admission
from .render.gang import UNAVAILABLE, GangPlan
from .render.names import checkpoint_dir, worker_name
from .render.topology import plan_topology

DEFAULT_SETTINGS = LifecycleSettings()

__all__ = ["TERMINAL_PHASES", "Decision", "Event", "LifecycleSettings", "decide", "restart_backoff", "status_patch"]


# ============================================================================================ decide
def decide(job: LLMTrainingJob, generation: Optional[int], pods: Sequence[Pod], previous: Optional[Mapping[str, Any]], now: datetime, *,
           observed_since: datetime, reported: Optional[Mapping[str, Any]] = None,
           settings: LifecycleSettings = DEFAULT_SETTINGS, gang_plan: Optional[GangPlan] = None,
           workload: Optional[Mapping[str, Any]] = None) -> Decision:
    """pods: every pod the job owns, of any gang. observed_since: when this operator process began watching the
    job (a stall is never judged on time it did not watch). reported: rank 0's metrics (progress.parse_progress)
    with the UID of the pod they were read from. gang_plan: the job's gang scheduler (render.gang.plan_gang),
    reported in the GangScheduled condition; one the cluster cannot serve fails the job. workload: the job's
    Kueue Workload (kueue.slim_workload), if any."""
    d = Draft(job, generation, previous or {}, now)
    queued = settings.kueue and queued_by_kueue(d)
    decision = _decide(d, pods, observed_since, reported, settings, gang_plan, workload if queued else None, queued)
    if queued and workload is not None:
        settle_workload(d, decision, workload)
    return decision


def _decide(d: Draft, pods: Sequence[Pod], observed_since: datetime, reported: Optional[Mapping[str, Any]],
            settings: LifecycleSettings, gang_plan: Optional[GangPlan], workload: Optional[Mapping[str, Any]], queued: bool) -> Decision:
    job, now = d.job, d.now
    gang = [p for p in pods if restart_of(p) == d.restarts]
    leftovers = [p for p in pods if restart_of(p) != d.restarts]
    _count_ready(d, gang)
    if pods and not d.status.get("startTime"):
        d.status["startTime"] = d.stamp
    _follow_progress(d, gang, reported)

    if d.phase in TERMINAL_PHASES:
        return _finished(d, pods)
    if gang_plan is not None:
        _gang_scheduled(d, gang_plan)
        if not gang_plan.available:
            return _fail_gang_unavailable(d, gang_plan, pods)
        topology = plan_topology(job, gang_plan, queued)
        if topology is not None:
            d.condition(TOPOLOGY_PLACED, "True" if topology.honoured else "False", topology.reason, topology.message, event=None)
            if topology.fails:
                d.stop([p for p in pods if not is_finished(p)])
                return _fail(d, Failure(reason=topology.reason, message=topology.message, matches_rules=False), topology.reason, topology.message, pods)
    if job.spec.run_policy.suspend:
        if queued:  # its Workload goes (_settle_workload): on resume it queues afresh
            d.clear(QUEUED, "JobSuspended", "runPolicy.suspend is true: the job left the queue (its Workload was deleted)")
        return _suspend(d, pods)
    if d.phase == "Suspended":
        _resume(d)
    if queued and not (admission := admission_of(workload)).may_run:
        return wait_for_admission(d, pods, admission, workload)
    if queued:
        admitted(d, admission)
    if _deadline_passed(d):
        return _fail_deadline(d, pods)
    if leftovers:  # an earlier gang is still there: never two gangs at once
        d.stop(leftovers)
        return d.decision()
    if d.phase == "Restarting" and (restart_at := d.time("restartTime")) and now < restart_at:
        d.wake_at(restart_at)
        return d.decision()

    failures = _failures(d, gang, settings)
    if failures and _cause_may_follow(d, failures, gang, settings):
        return d.decision()
    failure = first_of(failures) if failures else _stall(d, gang, observed_since)
    if failure is not None:
        return _on_failure(d, failure, gang, settings)
    if _succeeded(job, gang):
        return _succeed(d, pods)
    if len(gang) < job.spec.nodes:
        return d.decision(create_pods=True)
    _gang_created(d)
    if all(is_running(p) for p in gang):
        _gang_running(d, gang)
    return d.decision()


# ========================================================================================= observing
def _count_ready(d: Draft, gang: Sequence[Pod]) -> None:
    ready = sum(1 for p in gang if is_ready(p))
    d.status["readyNodes"] = ready
    d.status["nodesReady"] = f"{ready}/{d.job.spec.nodes}"


def _valid_report(reported: Mapping[str, Any], total: Optional[int]) -> bool:
    step = reported.get("step")
    loss = reported.get("loss")
    return isinstance(step, int) and 0 <= step and (total is None or step <= total) and (loss is None or math.isfinite(loss))


def total_steps(job: LLMTrainingJob, reported: Optional[Mapping[str, Any]], previous_progress: Mapping[str, Any]) -> Optional[int]:
    """The run's length: the built-in trainer's is spec.training.steps; a program's is what it reported (HF Trainer's
    total_steps, llmtraining_report's total_steps), else unknown."""
    if job.spec.program is None:
        return job.spec.training.steps
    for source in (reported or {}, previous_progress):
        if isinstance(source.get("totalSteps"), int) and source["totalSteps"] > 0:
            return int(source["totalSteps"])
    return None


REPORTED_VALUES = ("loss", "tokensPerSecond", "mfu", "evalLoss", "bestEvalLoss", "bestEvalStep")  # copied into status.progress, rounded
STATUS_DIGITS = 4  # significant digits: `kubectl get ltj` shows 2.238, not 2.2378828525543213 (printer columns cannot format)


def status_figure(value: float) -> float:
    """A figure as status.progress shows it: STATUS_DIGITS significant digits (the exact one stays in /metrics and summary.json)."""
    return float(f"{value:.{STATUS_DIGITS}g}")


def _rounded(values: Mapping[str, Any]) -> dict[str, Any]:
    """The reported figures as status.progress shows them."""
    return {k: status_figure(values[k]) if isinstance(values[k], float) else values[k] for k in REPORTED_VALUES if k in values}


def _follow_progress(d: Draft, gang: Sequence[Pod], reported: Optional[Mapping[str, Any]]) -> None:
    """rank 0's metrics → progress, lastCheckpoint; an advancing step → updateTime (stall detection), goodput."""
    previous = dict(d.previous.get("progress") or {})
    total = total_steps(d.job, reported, previous)
    progress = {**previous, **({"totalSteps": total} if total is not None else {})}
    progress.setdefault("step", 0)
    rank0 = next((p for p in gang if node_rank(p) == 0), None)
    fresh = reported is not None and rank0 is not None and reported.get("podUid") == rank0["metadata"].get("uid") and _valid_report(reported, total)
    if fresh:
        assert reported is not None
        step = int(reported["step"])
        progress.update(_rounded(reported))
        if step > 0 and step != previous.get("step"):
            _step_advanced(d, previous)
            progress["updateTime"] = d.stamp
        progress["step"] = step
        if reported.get("lastCheckpointStep"):
            ckpt = int(reported["lastCheckpointStep"])
            tag = f"global_step{ckpt}"
            d.status["lastCheckpoint"] = {"step": ckpt, "tag": tag, "path": f"{checkpoint_dir(d.job)}/{tag}"}
    final = d.final_state = _final_state(rank0, total)
    if final is not None:  # what the run ended with, from worker 0's termination message: newer than any scrape
        progress.update({"step": final["step"], **_rounded(final)})
        checkpoint = final.get("lastCheckpoint") or {}
        if isinstance(checkpoint.get("step"), int) and checkpoint.get("tag"):
            d.status["lastCheckpoint"] = {"step": checkpoint["step"], "tag": checkpoint["tag"], "path": f"{checkpoint_dir(d.job)}/{checkpoint['tag']}"}
    progress["stepOfTotal"] = step_of_total(progress["step"], total, reported=awaits_first_step(d.job) or "updateTime" in progress)
    d.status["progress"] = progress


NOT_REPORTED = "not reported"


def step_of_total(step: int, total: Optional[int], *, reported: bool) -> str:
    """status.progress.stepOfTotal (kubectl's Step column): a program that never reported a step says so, not 0/N;
    one that reported no total shows its step over '?'."""
    return f"{step}/{'?' if total is None else total}" if reported else NOT_REPORTED


def _final_state(rank0: Optional[Pod], total: Optional[int]) -> Optional[dict[str, Any]]:
    final = parse_final_state(terminated_state(rank0).get("message")) if rank0 is not None else None
    return final if final is not None and _valid_report(final, total) else None


def _step_advanced(d: Draft, previous_progress: Mapping[str, Any]) -> None:
    d.status.setdefault("firstStepTime", d.stamp)
    running_since = d.since(RUNNING)
    last_step = parse_time(previous_progress.get("updateTime"))
    first_of_gang = running_since is not None and (last_step is None or last_step < running_since)
    failed_at = parse_time((d.status.get("failure") or {}).get("time"))
    caused_by_failure = failed_at is not None and (last_step is None or failed_at >= last_step)  # not a resume after suspend
    if d.restarts and first_of_gang and caused_by_failure and failed_at:  # a restart's downtime ends with the new gang's first step
        d.status["lostSeconds"] = round(float(d.status.get("lostSeconds") or 0) + seconds_between(failed_at, d.now), 3)


def _deadline_passed(d: Draft) -> bool:
    limit = d.job.spec.run_policy.active_deadline_seconds
    started = d.time("startTime")
    if limit is None or started is None:
        return False
    deadline = started + timedelta(seconds=limit + float(d.status.get("suspendedSeconds") or 0))
    if d.now >= deadline:
        return True
    d.wake_at(deadline)
    return False


def _failures(d: Draft, gang: Sequence[Pod], settings: LifecycleSettings) -> list[Failure]:
    failures: list[Failure] = []
    grace = timedelta(seconds=settings.node_lost_grace_seconds)
    for pod in gang:
        if has_failed(pod) or (is_disrupted(pod) and not has_succeeded(pod)):
            failures.append(failed_pod(pod))
        elif is_terminating(pod) and not is_finished(pod):  # the operator never deletes a live gang's pod
            failures.append(deleted_pod(pod))
        elif (since := not_ready_since(pod)) is not None:
            if d.now - since >= grace:
                failures.append(node_lost(pod, since, settings.node_lost_grace_seconds))
            else:
                d.wake_at(since + grace)
    if is_true(d.conditions, CREATED):  # the whole gang existed: a missing worker was removed behind our back
        present = {node_rank(p) for p in gang}
        failures += [vanished_pod(worker_name(d.job, rank), rank) for rank in range(d.job.spec.nodes) if rank not in present]
    return failures


def _cause_may_follow(d: Draft, failures: Sequence[Failure], gang: Sequence[Pod], settings: LifecycleSettings) -> bool:
    """Every failure so far is a rank that lost a peer, and a peer's pod is still up: that peer is the likely cause
    (a rank killed outright), and its pod reports a moment later. Wait for it, a little, rather than blame a victim."""
    if not all(lost_a_peer(f) for f in failures):
        return False
    failed = {f.pod for f in failures}
    if all(name_of(p) in failed or is_finished(p) for p in gang):
        return False
    first = min((f.at for f in failures if f.at is not None), default=None)
    if first is None:  # no time to count the wait from: a wait counted from now would never end
        return False
    until = first + timedelta(seconds=settings.peer_loss_wait_seconds)
    if d.now >= until:
        return False
    d.wake_at(until)
    return True


def stall_limit(stall_timeout: Optional[int], startup_timeout: Optional[int], *, step_seen: bool, first_step_awaited: bool) -> Optional[int]:
    """Seconds without a new step after which the gang has stalled; None: not judged. Before the gang's first step
    that is startupTimeoutSeconds, but only where a first step is awaited: a user's program may report no progress
    at all, and stall detection never fires on a step it never saw (after its first step, stallTimeoutSeconds applies)."""
    if step_seen:
        return stall_timeout
    return startup_timeout if first_step_awaited else None


def awaits_first_step(job: LLMTrainingJob) -> bool:
    """The built-in trainer always reports its steps; a user's program (spec.program, issue 18) reports them only if it
    is an HF Trainer program or calls llmtraining_report."""
    return job.spec.program is None


def _stall(d: Draft, gang: Sequence[Pod], observed_since: datetime) -> Optional[Failure]:
    """No step read for stallTimeoutSeconds (startupTimeoutSeconds before the gang's first step)."""
    if d.phase != "Running" or not all(is_running(p) for p in gang):
        return None
    policy = d.job.spec.run_policy
    running_since = d.since(RUNNING)
    if running_since is None:
        return None
    last_step = parse_time((d.status.get("progress") or {}).get("updateTime"))
    if last_step is not None and last_step < running_since:
        last_step = None  # a step of an earlier gang
    limit = stall_limit(policy.stall_timeout_seconds, policy.startup_timeout_seconds, step_seen=last_step is not None,
                        first_step_awaited=awaits_first_step(d.job))
    if last_step is None:
        since, what = running_since, "no training step was read since all workers started running"
    else:
        since, what = last_step, f"step {d.status['progress']['step']} has not advanced"
    if limit is None:
        return None
    deadline = max(since, observed_since) + timedelta(seconds=limit)
    if d.now < deadline:
        d.wake_at(deadline)
        return None
    rank0 = next((p for p in gang if node_rank(p) == 0), None)
    return stalled(rank0, f"{what} for {limit} s (a hung collective or data loader?)")


def _succeeded(job: LLMTrainingJob, gang: Sequence[Pod]) -> bool:
    if job.spec.launcher.mode == "ssh":  # worker 0 runs the launcher; the others only serve sshd
        return any(node_rank(p) == 0 and has_succeeded(p) for p in gang)
    return len(gang) == job.spec.nodes and all(has_succeeded(p) for p in gang)


# ========================================================================================= acting
def _gang_created(d: Draft) -> None:
    nodes = d.job.spec.nodes
    d.condition(CREATED, "True", "PodsCreated", f"{nodes}/{nodes} worker pods created" + (f" (restart {d.restarts})" if d.restarts else ""))
    if d.phase in ("Pending", "Restarting"):
        d.phase = "Created"
    d.status.pop("restartTime", None)


def _gang_running(d: Draft, gang: Sequence[Pod]) -> None:
    nodes = d.job.spec.nodes
    d.phase = "Running"
    d.condition(RUNNING, "True", "AllWorkersRunning", f"all {nodes} workers running" + (f" (restart {d.restarts})" if d.restarts else ""))
    d.clear(RESTARTING, "GangRunning", f"gang {d.restarts} is running")
    d.clear(PROGRESS_STALLED, "GangRunning", f"gang {d.restarts} is running")


def _on_failure(d: Draft, failure: Failure, gang: Sequence[Pod], settings: LifecycleSettings) -> Decision:
    action, failure = action_for(d.job.spec.run_policy.pod_failure_policy.rules, failure)
    limit = d.job.spec.run_policy.backoff_limit
    if failure.reason == "Stalled":
        d.condition(PROGRESS_STALLED, "True", "Stalled", failure.message, "Warning")
    if action == "FailJob":
        return _fail(d, failure, "PodFailurePolicy", f"{failure.describe()} (a FailJob rule matched)", gang)
    if action == "Count" and int(d.status["countedRestarts"]) >= limit:
        return _fail(d, failure, "BackoffLimitExceeded", f"{failure.describe()}; backoffLimit ({limit}) restarts already spent", gang)
    return _restart(d, failure, counted=action == "Count", gang=gang, settings=settings)


def _restart(d: Draft, failure: Failure, *, counted: bool, gang: Sequence[Pod], settings: LifecycleSettings) -> Decision:
    """Record the decision (status is written before any pod is stopped), then stop the whole gang."""
    previous_failure = parse_time((d.status.get("failure") or {}).get("time"))
    last_useful = max((t for t in (d.time("startTime"), previous_failure,
                                   parse_time((d.status.get("progress") or {}).get("updateTime"))) if t), default=None)
    d.status["lostSeconds"] = round(float(d.status.get("lostSeconds") or 0) + seconds_between(last_useful, d.now), 3)
    d.status["restarts"] = d.restarts + 1
    if counted:
        d.status["countedRestarts"] = int(d.status["countedRestarts"]) + 1
    delay = restart_backoff(int(d.status["countedRestarts"]), settings) if counted else 0.0
    d.status["restartTime"] = rfc3339(d.now + timedelta(seconds=delay))
    d.status["failure"] = failure.to_status(d.now)
    d.phase = "Restarting"
    checkpoint = (d.status.get("lastCheckpoint") or {}).get("tag")
    limit = d.job.spec.run_policy.backoff_limit
    message = (f"{failure.describe()}; restarting the gang (restart {d.restarts}, {d.status['countedRestarts']}/{limit} counted toward "
               f"backoffLimit{'' if counted else ', this one not counted'})" + (f" in {delay:.0f} s" if delay else "")
               + (f", from checkpoint {checkpoint}" if checkpoint else ", from the start (no checkpoint yet)"))
    d.condition(RESTARTING, "True", failure.reason, message, event=None)
    d.events.append(Event("Warning", "Restarting", message))
    d.condition(CREATED, "False", "Restarting", f"gang {d.restarts - 1} is being stopped")
    d.condition(RUNNING, "False", failure.reason, failure.describe())
    d.stop(gang)
    return d.decision()


def _suspend(d: Draft, pods: Sequence[Pod]) -> Decision:
    """runPolicy.suspend: no pods. A gang that ran is stopped (SIGTERM: the trainer checkpoints), and the next one, on
    resume, is a new incarnation, so that none of its pods is ever taken for the old gang's."""
    if d.phase != "Suspended":
        if pods or is_true(d.conditions, CREATED):
            d.status["restarts"] = d.restarts + 1
        d.phase = "Suspended"
        d.status.pop("restartTime", None)
        message = "runPolicy.suspend is true: " + ("the gang was stopped (SIGTERM, so the trainer saved a checkpoint)" if pods else "no pods")
        d.condition(SUSPENDED, "True", "JobSuspended", message)
        d.condition(CREATED, "False", "JobSuspended", message)
        d.condition(RUNNING, "False", "JobSuspended", message)
        d.clear(RESTARTING, "JobSuspended", message)
        d.clear(PROGRESS_STALLED, "JobSuspended", message)
    d.stop(pods)
    return d.decision()


def _resume(d: Draft) -> None:
    """runPolicy.suspend went back to false: the deadline clock goes on, and the next gang is created as usual."""
    since = d.since(SUSPENDED)
    d.status["suspendedSeconds"] = round(float(d.status.get("suspendedSeconds") or 0) + seconds_between(since, d.now), 3)
    d.phase = "Pending"
    message = f"runPolicy.suspend is false: gang {d.restarts} starts from the latest checkpoint"
    d.condition(SUSPENDED, "False", "JobResumed", message)
    d.events.append(Event("Normal", "JobResumed", message))


def _fail(d: Draft, failure: Failure, reason: str, message: str, gang: Sequence[Pod]) -> Decision:
    d.status["failure"] = failure.to_status(d.now)
    d.status.pop("restartTime", None)
    d.phase = "Failed"
    d.status["completionTime"] = d.stamp
    d.clear(RESTARTING, reason, message)
    d.condition(RUNNING, "False", reason, message)
    d.condition(FAILED, "True", reason, message, "Warning")
    return _finished(d, gang)


def _gang_scheduled(d: Draft, plan: GangPlan) -> None:
    """GangScheduled: True with the scheduler as reason, False when none binds the gang. A Warning Event only when the
    gang scheduling a user may count on is missing (a job that named it fails, and its failure Event says so): the
    condition says the rest without a write per job."""
    before = find(d.conditions, GANG_SCHEDULED)
    d.condition(GANG_SCHEDULED, "True" if plan.grouped and plan.available else "False", plan.reason, plan.message, event=None)
    if plan.reason == UNAVAILABLE and plan.available and (before is None or before.get("reason") != plan.reason):
        d.events.append(Event("Warning", plan.reason, plan.message))


def _fail_gang_unavailable(d: Draft, plan: GangPlan, pods: Sequence[Pod]) -> Decision:
    """A gang scheduler the cluster does not serve: fail at once, by name, rather than run the gang ungrouped."""
    d.stop([p for p in pods if not is_finished(p)])
    return _fail(d, Failure(reason=plan.reason, message=plan.message, matches_rules=False), plan.reason, plan.message, pods)


def _fail_deadline(d: Draft, pods: Sequence[Pod]) -> Decision:
    limit = d.job.spec.run_policy.active_deadline_seconds
    message = f"the job ran longer than activeDeadlineSeconds ({limit} s); its workers were stopped (SIGTERM, so the trainer saved)"
    d.stop([p for p in pods if not is_finished(p)])  # whatever cleanPodPolicy says: the deadline stops the gang
    return _fail(d, Failure(reason="DeadlineExceeded", message=message, matches_rules=False), "DeadlineExceeded", message, pods)


def _succeed(d: Draft, pods: Sequence[Pod]) -> Decision:
    job = d.job
    nodes, total = job.spec.nodes, d.status["progress"].get("totalSteps")
    launcher_only = job.spec.launcher.mode == "ssh" and not all(has_succeeded(p) for p in pods)
    message = "training finished: " + ("the launcher (worker 0) exited 0" if launcher_only else f"all {nodes} workers exited 0")
    reason = "JobSucceeded"
    if (d.final_state or {}).get("stopReason") == EARLY_STOPPED:  # training.earlyStopping ended it before spec.training.steps
        reason, final = EARLY_STOPPED, d.final_state or {}
        message = (f"training stopped early at step {final.get('step')}: the held-out loss stopped improving (best "
                   f"{final.get('bestEvalLoss')} at step {final.get('bestEvalStep')}, the exported model); {message.removeprefix('training finished: ')}")
    d.phase = "Succeeded"
    d.status["completionTime"] = d.stamp
    # an image without the final state: the last scrape predates the end (a program that reported nothing: no step)
    if d.final_state is None and d.status["progress"]["stepOfTotal"] != NOT_REPORTED and total is not None:
        d.status["progress"] = {**d.status["progress"], "step": total, "stepOfTotal": f"{total}/{total}"}
    d.clear(RESTARTING, reason, message)
    d.condition(RUNNING, "False", reason, message)
    d.condition(SUCCEEDED, "True", reason, message)
    if d.final_state and d.final_state.get("resized"):  # the trainer resumed through a universal checkpoint
        d.events.append(Event("Normal", "ResumedOnAnotherWorldSize", str(d.final_state["resized"])))
    return _finished(d, pods)


def _finished(d: Draft, pods: Sequence[Pod]) -> Decision:
    """A finished job: cleanPodPolicy, then ttlSecondsAfterFinished."""
    spec = d.job.spec
    policy = spec.run_policy.clean_pod_policy
    for pod in pods:
        if restart_of(pod) != d.restarts:
            d.stop([pod])  # a leftover of an earlier gang
            continue
        if is_finished(pod) and policy != "All":
            continue
        sshd_only = spec.launcher.mode == "ssh" and node_rank(pod) > 0  # never exits by itself
        if policy != "None" or sshd_only:
            d.stop([pod])
    ttl = spec.run_policy.ttl_seconds_after_finished
    finished_at = d.time("completionTime")
    if ttl is not None and finished_at is not None:
        expiry = finished_at + timedelta(seconds=ttl)
        if d.now >= expiry:
            return d.decision(delete_job=True)
        d.wake_at(expiry)
    return d.decision()


def status_patch(current: Optional[Mapping[str, Any]], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch from current to desired status: changed keys, and null for keys to remove. {} if equal."""
    current = current or {}
    patch = {key: value for key, value in desired.items() if current.get(key) != value}
    patch.update({key: None for key in current if key not in desired})
    return patch
