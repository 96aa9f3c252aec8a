"""The lifecycle decision (lifecycle.decide): every transition as a table row, then the properties that
make it restart-safe. Pure: pods and statuses are plain dicts, the clock is a parameter."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from llm_operator.api import parse_job
from llm_operator.lifecycle import LifecycleSettings, decide, restart_backoff, status_patch

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=timezone.utc)
UID = "0b5c1e5e-1111-2222-3333-444455556666"
SETTINGS = LifecycleSettings(restart_backoff_seconds=10, restart_backoff_max_seconds=300, node_lost_grace_seconds=60)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ts(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(rank, phase="Running", *, restart=0, ready=None, exit_code=None, reason=None, finished=None, message=None,
        conditions=(), deleting=False, not_ready_since=None, uid=None):
    ready = phase == "Running" if ready is None else ready
    status = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                              "lastTransitionTime": ts(not_ready_since if not_ready_since is not None else 0)}]}
    status["conditions"] += [dict(c) for c in conditions]
    if exit_code is not None:
        terminated = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error")}
        if finished is not None:
            terminated["finishedAt"] = ts(finished)
        if message:
            terminated["message"] = message
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    meta = {"name": f"demo-worker-{rank}", "uid": uid or f"pod-{rank}-{restart}",
            "labels": {"llmtraining.dev/node-rank": str(rank), "llmtraining.dev/restart": str(restart)}, "ownerReferences": [{"uid": UID}]}
    if deleting:
        meta["deletionTimestamp"] = ts(0)
    return {"metadata": meta, "spec": {"nodeName": f"gpu-node-{rank}"}, "status": status}


def gang(phase="Running", restart=0, **kw):
    return [pod(0, phase, restart=restart, **kw), pod(1, phase, restart=restart, **kw)]


@pytest.fixture
def make_job(manifest):
    def make(**run_policy):
        manifest["spec"]["runPolicy"] = run_policy
        return parse_job(manifest)
    return make


def run(job, pods, previous=None, now=0, reported=None, observed_since=-3600):
    return decide(job, 1, pods, previous, at(now), observed_since=at(observed_since), reported=reported, settings=SETTINGS)


def running_status(job, restarts=0, **extra):
    """The status of a job whose gang `restarts` has been Running since T0."""
    created = run(job, gang("Pending", restart=restarts), {"restarts": restarts, **extra}, now=-10).status
    return run(job, gang(restart=restarts), created, now=0).status


def conditions(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


# ============================================================================================= tables
def test_gang_start_and_run(make_job):
    job = make_job()
    pending = run(job, [])
    assert pending.create_pods and pending.status["phase"] == "Pending" and "startTime" not in pending.status
    created = run(job, gang("Pending"), pending.status, now=1)
    assert created.status["phase"] == "Created" and created.status["startTime"] == ts(1) and not created.create_pods
    assert [e.reason for e in created.events] == ["PodsCreated"]
    running = run(job, gang(), created.status, now=5)
    assert running.status["phase"] == "Running" and running.status["nodesReady"] == "2/2"
    assert conditions(running.status) == {"Created": ("True", "PodsCreated"), "Running": ("True", "AllWorkersRunning"),
                                         "Ready": ("True", "Running"), "Reconciling": ("False", "Running")}
    again = run(job, gang(), running.status, now=9)
    assert status_patch(running.status, again.status) == {} and again.events == []


def test_partially_created_gang_is_completed_not_failed(make_job):
    """The operator was killed mid-creation: a missing pod is created, never taken for a deleted one."""
    job = make_job()
    decision = run(job, [pod(0, "Pending")], {"phase": "Pending"})
    assert decision.create_pods and decision.status["phase"] == "Pending"


@pytest.mark.parametrize(
    "failed_pod, rules, expect_phase, expect_reason, counted",
    [
        (pod(1, "Failed", exit_code=137, reason="OOMKilled"), None, "Restarting", "OOMKilled", 1),
        (pod(1, "Failed", exit_code=1, message="RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error"),
         None, "Restarting", "NCCLError", 1),
        (pod(1, "Failed", exit_code=1), [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}}], "Failed", "UserError", 0),
        (pod(1, "Failed", exit_code=3), [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}}], "Restarting", "Error", 1),
        (pod(1, "Failed", exit_code=3), [{"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [137]}}], "Failed", "UserError", 0),
        (pod(1, "Failed", exit_code=3), [{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [3]}}], "Restarting", "Error", 0),
        (pod(1, "Running", conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]),
         None, "Restarting", "Preempted", 0),
        (pod(1, "Failed", exit_code=143, conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]),
         None, "Restarting", "Evicted", 0),
        (pod(1, "Failed", exit_code=143, conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}]),
         None, "Restarting", "NodeLost", 0),
        (pod(1, "Failed", exit_code=143, conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]),
         [], "Restarting", "Preempted", 1),  # no rules at all: every failure counts, as in a Job
        (pod(1, "Running", deleting=True), None, "Restarting", "PodDeleted", 0),
        (pod(1, "Running", ready=False, not_ready_since=-61), None, "Restarting", "NodeLost", 0),
        (pod(1, "Failed", exit_code=5, message="data.tokenizer: /data/tok.json: not found"), None, "Failed", "InvalidInput", 0),
    ],
    ids=["oom-counts", "nccl-counts", "failjob-exit-1", "failjob-other-code", "failjob-notin", "ignore-exit-code", "preempted-ignored",
         "evicted-ignored", "node-lost-ignored", "no-rules-counts", "deleted-ignored", "not-ready-node-ignored",
         "bad-input-fails-by-default"],
)
def test_worker_failure(make_job, failed_pod, rules, expect_phase, expect_reason, counted):
    policy = {} if rules is None else {"podFailurePolicy": {"rules": rules}}
    job = make_job(**policy)
    previous = running_status(job)
    decision = run(job, [pod(0), failed_pod], previous, now=30)
    status = decision.status
    assert status["phase"] == expect_phase
    assert status["failure"]["reason"] == expect_reason and status["failure"]["pod"] == "demo-worker-1" and status["failure"]["rank"] == 1
    assert status["countedRestarts"] == counted
    if expect_phase == "Restarting":
        assert status["restarts"] == 1
        assert status["restartTime"] == ts(30 + (10 if counted else 0))
        assert decision.delete_pods == [n for n in ("demo-worker-0", "demo-worker-1") if not (n == "demo-worker-1" and failed_pod["metadata"].get("deletionTimestamp"))]
        assert conditions(status)["Restarting"] == ("True", expect_reason)
        assert conditions(status)["Running"][0] == "False"
        (event,) = [e for e in decision.events if e.reason == "Restarting"]
        assert event.type == "Warning" and expect_reason in event.message
    else:
        assert conditions(status)["Failed"] == ("True", "PodFailurePolicy") and status["completionTime"] == ts(30)
        assert status["restarts"] == 0 and decision.delete_pods == ["demo-worker-0"]  # cleanPodPolicy Running


def test_node_not_ready_within_grace_waits_and_wakes(make_job):
    job = make_job()
    decision = run(job, [pod(0), pod(1, ready=False, not_ready_since=20)], running_status(job), now=30)
    assert decision.status["phase"] == "Running" and decision.wake_after == 50  # 20 + 60 - 30


def test_vanished_worker_restarts_without_counting(make_job):
    job = make_job()
    decision = run(job, [pod(0)], running_status(job), now=30)
    assert decision.status["phase"] == "Restarting" and decision.status["failure"]["reason"] == "PodDeleted"
    assert decision.status["countedRestarts"] == 0 and decision.delete_pods == ["demo-worker-0"]


def test_first_worker_to_fail_is_the_cause(make_job):
    job = make_job()
    pods = [pod(0, "Failed", exit_code=1, finished=25, message="NCCL watchdog timeout"),  # a victim
            pod(1, "Failed", exit_code=137, reason="OOMKilled", finished=20)]
    failure = run(job, pods, running_status(job), now=30).status["failure"]
    assert (failure["pod"], failure["reason"], failure["exitCode"], failure["node"]) == ("demo-worker-1", "OOMKilled", 137, "gpu-node-1")


GLOO_RESET = "command exited with status 1; rank 0: RuntimeError: [gloo/transport/tcp/pair.cc:534] Read error [10.0.0.2]:5041: Connection reset by peer"
KILLED = "command exited with status 247 (DeepSpeed's way of saying a rank was killed by SIGKILL: the OOM killer or a kill from outside)"


def test_a_rank_that_lost_its_peer_is_not_the_cause_even_in_the_same_second(make_job):
    job = make_job()
    pods = [pod(0, "Failed", exit_code=1, finished=20, message=GLOO_RESET),
            pod(1, "Failed", exit_code=247, finished=20, message=KILLED)]
    failure = run(job, pods, running_status(job), now=21).status["failure"]
    assert (failure["pod"], failure["exitCode"]) == ("demo-worker-1", 247)


def test_a_lost_peer_waits_for_the_peers_own_failure(make_job):
    """Rank 0's pod reports its connection reset before the killed rank 1's pod reports: no restart yet."""
    job = make_job()
    status = running_status(job)
    waiting = run(job, [pod(0, "Failed", exit_code=1, finished=20, message=GLOO_RESET), pod(1)], status, now=21)
    assert waiting.status["phase"] == "Running" and "failure" not in waiting.status and not waiting.delete_pods
    assert waiting.wake_after == pytest.approx(14)  # 15 s from the first failure
    both = [pod(0, "Failed", exit_code=1, finished=20, message=GLOO_RESET), pod(1, "Failed", exit_code=247, finished=22, message=KILLED)]
    failure = run(job, both, waiting.status, now=23).status["failure"]
    assert failure["pod"] == "demo-worker-1"


def test_a_lost_peer_alone_is_the_failure_once_the_wait_is_over(make_job):
    """A real network fault: only lost peers ever show up."""
    job = make_job()
    decision = run(job, [pod(0, "Failed", exit_code=1, finished=20, message=GLOO_RESET), pod(1)], running_status(job), now=35)
    assert decision.status["phase"] == "Restarting" and decision.status["failure"]["pod"] == "demo-worker-0"
    assert set(decision.delete_pods) == {"demo-worker-0", "demo-worker-1"}


def test_no_wait_for_a_lost_peer_whose_pod_gives_no_finish_time(make_job):
    job = make_job()
    decision = run(job, [pod(0, "Failed", exit_code=1, message=GLOO_RESET), pod(1)], running_status(job), now=21)
    assert decision.status["phase"] == "Restarting" and decision.status["failure"]["pod"] == "demo-worker-0"


def test_no_wait_when_every_peer_has_already_finished(make_job):
    job = make_job()
    pods = [pod(0, "Failed", exit_code=1, finished=20, message=GLOO_RESET),
            pod(1, "Failed", exit_code=1, finished=20, message="RuntimeError: NCCL error: remote process exited or there was a network error")]
    decision = run(job, pods, running_status(job), now=21)
    assert decision.status["phase"] == "Restarting" and decision.status["failure"]["pod"] == "demo-worker-0"


def test_restart_sequence_waits_for_old_pods_then_backoff_then_new_gang(make_job):
    job = make_job()
    restarting = run(job, [pod(0), pod(1, "Failed", exit_code=137)], running_status(job), now=30).status
    # the old gang is still terminating: stop what is not stopped yet, create nothing
    old = [pod(0, deleting=True), pod(1, "Failed", exit_code=137)]
    waiting = run(job, old, restarting, now=31)
    assert not waiting.create_pods and waiting.delete_pods == ["demo-worker-1"] and waiting.status["phase"] == "Restarting"
    # gone, backoff not over: wake at restartTime
    backoff = run(job, [], restarting, now=35)
    assert not backoff.create_pods and backoff.wake_after == 5
    # backoff over: the next gang
    create = run(job, [], restarting, now=40)
    assert create.create_pods
    created = run(job, gang("Pending", restart=1), restarting, now=41).status
    assert created["phase"] == "Created" and "restartTime" not in created
    running = run(job, gang(restart=1), created, now=45).status
    assert running["phase"] == "Running" and running["restarts"] == 1
    assert conditions(running)["Restarting"] == ("False", "GangRunning")


def test_late_event_of_an_old_pod_is_never_taken_for_the_new_gang(make_job):
    job = make_job()
    restarting = run(job, [pod(0), pod(1, "Failed", exit_code=137)], running_status(job), now=30).status
    running = run(job, gang(restart=1), run(job, gang("Pending", restart=1), restarting, now=41).status, now=45).status
    # a stale pod of gang 0 shows up failed (e.g. a delayed listing): it is stopped, the new gang is untouched
    decision = run(job, gang(restart=1) + [pod(1, "Failed", restart=0, exit_code=1, uid="old")], running, now=50)
    assert decision.status["restarts"] == 1 and decision.status["phase"] == "Running"


def test_backoff_limit(make_job):
    job = make_job(backoffLimit=1)
    once = run(job, [pod(0), pod(1, "Failed", exit_code=137)], running_status(job), now=30).status
    assert once["phase"] == "Restarting" and once["countedRestarts"] == 1
    second_gang = running_status(job, restarts=1, countedRestarts=1, failure=once["failure"], conditions=once["conditions"])
    spent = run(job, [pod(0, restart=1), pod(1, "Failed", restart=1, exit_code=137)], second_gang, now=300)
    assert spent.status["phase"] == "Failed" and conditions(spent.status)["Failed"] == ("True", "BackoffLimitExceeded")
    assert spent.status["failure"]["reason"] == "Error" and spent.status["restarts"] == 1
    assert "backoffLimit (1)" in [e for e in spent.events if e.reason == "BackoffLimitExceeded"][0].message
    # an Ignore failure never exhausts it
    free = run(job, [pod(0, restart=1), pod(1, "Running", restart=1, deleting=True)], second_gang, now=300)
    assert free.status["phase"] == "Restarting" and free.status["countedRestarts"] == 1 and free.status["restarts"] == 2


@pytest.mark.parametrize("counted, expected", [(0, 0), (1, 10), (2, 20), (3, 40), (5, 160), (6, 300), (20, 300)])
def test_restart_backoff_doubles_and_is_capped(counted, expected):
    assert restart_backoff(counted, SETTINGS) == expected


def test_active_deadline(make_job):
    job = make_job(activeDeadlineSeconds=100)
    previous = running_status(job)  # started at -10
    before = run(job, gang(), previous, now=50)
    assert before.status["phase"] == "Running" and before.wake_after == 40
    after = run(job, gang(), previous, now=95)
    assert after.status["phase"] == "Failed" and after.status["failure"]["reason"] == "DeadlineExceeded"
    assert conditions(after.status)["Failed"] == ("True", "DeadlineExceeded")
    assert sorted(after.delete_pods) == ["demo-worker-0", "demo-worker-1"]


def test_deadline_stops_the_gang_whatever_the_clean_pod_policy(make_job):
    job = make_job(activeDeadlineSeconds=100, cleanPodPolicy="None")
    after = run(job, gang(), running_status(job), now=95)
    assert sorted(after.delete_pods) == ["demo-worker-0", "demo-worker-1"]


def test_ttl_after_finished(make_job):
    job = make_job(ttlSecondsAfterFinished=30)
    done = run(job, gang("Succeeded", exit_code=0), running_status(job), now=10)
    assert done.status["phase"] == "Succeeded" and done.wake_after == 30 and not done.delete_job
    assert run(job, gang("Succeeded", exit_code=0), done.status, now=39).wake_after == 1
    assert run(job, gang("Succeeded", exit_code=0), done.status, now=40).delete_job


def test_no_ttl_keeps_the_job(make_job):
    job = make_job()
    done = run(job, gang("Succeeded", exit_code=0), running_status(job), now=10)
    assert not done.delete_job and done.wake_after is None


def reported(step, pod_uid="pod-0-0", **extra):
    return {"step": step, "podUid": pod_uid, **extra}


def test_stall_restarts_the_gang_as_a_counted_failure(make_job):
    job = make_job(stallTimeoutSeconds=60)
    stepping = run(job, gang(), running_status(job), now=10, reported=reported(5, loss=2.0)).status
    assert stepping["progress"]["updateTime"] == ts(10) and stepping["firstStepTime"] == ts(10)
    quiet = run(job, gang(), stepping, now=69, reported=reported(5, loss=2.0))
    assert quiet.status["phase"] == "Running" and quiet.wake_after == 1
    stalled = run(job, gang(), stepping, now=70, reported=reported(5, loss=2.0))
    assert stalled.status["phase"] == "Restarting" and stalled.status["failure"]["reason"] == "Stalled"
    assert stalled.status["countedRestarts"] == 1 and conditions(stalled.status)["ProgressStalled"] == ("True", "Stalled")
    assert "Stalled" in [e.reason for e in stalled.events]
    assert stalled.status["lostSeconds"] == 60  # from the last step read to the decision


def test_stall_is_never_judged_on_time_the_operator_did_not_watch(make_job):
    job = make_job(stallTimeoutSeconds=60)
    stepping = run(job, gang(), running_status(job), now=10, reported=reported(5)).status
    # the operator restarted at 500 s: it waits a whole timeout from then before calling it a stall
    fresh_operator = run(job, gang(), stepping, now=510, observed_since=500)
    assert fresh_operator.status["phase"] == "Running" and fresh_operator.wake_after == 50


def test_startup_timeout_before_the_first_step(make_job):
    job = make_job(startupTimeoutSeconds=120, stallTimeoutSeconds=60)
    previous = running_status(job)  # Running since 0, no step read yet
    assert run(job, gang(), previous, now=100).status["phase"] == "Running"
    late = run(job, gang(), previous, now=120)
    assert late.status["phase"] == "Restarting" and "no training step" in late.status["failure"]["message"]


def test_progress_of_another_gangs_pod_is_ignored(make_job):
    job = make_job()
    status = run(job, gang(), running_status(job), now=10, reported=reported(5, pod_uid="pod-0-old")).status
    assert status["progress"]["step"] == 0


@pytest.mark.parametrize("bad", [reported(11), reported(-1), reported(3, loss=float("nan"))])
def test_implausible_progress_is_ignored(make_job, bad):
    job = make_job()
    status = run(job, gang(), running_status(job), now=10, reported=bad).status
    assert status["progress"] == {"step": 0, "totalSteps": 10, "stepOfTotal": "0/10"}


def test_progress_and_checkpoint_survive_a_restart(make_job):
    job = make_job()
    stepping = run(job, gang(), running_status(job), now=10, reported=reported(7, loss=2.5, lastCheckpointStep=5)).status
    assert stepping["lastCheckpoint"] == {"step": 5, "tag": "global_step5", "path": "/checkpoints/checkpoints/global_step5"}
    restarting = run(job, [pod(0), pod(1, "Failed", exit_code=137)], stepping, now=30)
    assert restarting.status["lastCheckpoint"]["step"] == 5 and restarting.status["progress"]["step"] == 7
    assert "from checkpoint global_step5" in [e for e in restarting.events if e.reason == "Restarting"][0].message


def test_lost_seconds_run_from_the_last_step_to_the_next_gangs_first_step(make_job):
    job = make_job()
    stepping = run(job, gang(), running_status(job), now=10, reported=reported(7)).status
    restarting = run(job, [pod(0), pod(1, "Failed", exit_code=137)], stepping, now=30).status
    assert restarting["lostSeconds"] == 20
    created = run(job, gang("Pending", restart=1), restarting, now=41).status
    running = run(job, gang(restart=1), created, now=45).status
    first = run(job, gang(restart=1), running, now=100, reported=reported(6, pod_uid="pod-0-1")).status
    assert first["lostSeconds"] == 20 + 70 and first["firstStepTime"] == ts(10)


def test_all_workers_succeed(make_job):
    job = make_job()
    done = run(job, gang("Succeeded", exit_code=0), running_status(job), now=20)
    assert done.finished and done.status["completionTime"] == ts(20)
    assert done.status["progress"]["stepOfTotal"] == "10/10"
    assert conditions(done.status) == {"Created": ("True", "PodsCreated"), "Running": ("False", "JobSucceeded"), "Succeeded": ("True", "JobSucceeded"),
                                      "Ready": ("True", "Succeeded"), "Reconciling": ("False", "Succeeded")}
    assert done.delete_pods == []


def test_one_worker_succeeded_is_not_done(make_job):
    job = make_job()
    assert run(job, [pod(0, "Succeeded", exit_code=0), pod(1)], running_status(job), now=20).status["phase"] == "Running"


def test_ssh_mode_succeeds_when_the_launcher_does_and_stops_the_sshd_workers(manifest):
    manifest["spec"]["launcher"] = {"mode": "ssh"}
    job = parse_job(manifest)
    done = run(job, [pod(0, "Succeeded", exit_code=0), pod(1)], running_status(job), now=20)
    assert done.status["phase"] == "Succeeded" and done.delete_pods == ["demo-worker-1"]


def test_finished_job_never_moves(make_job):
    job = make_job()
    failed = run(job, [pod(0), pod(1, "Failed", exit_code=1)], running_status(job, countedRestarts=3), now=20).status
    later = run(job, [pod(0, "Succeeded", exit_code=0), pod(1, "Failed", exit_code=1)], failed, now=50)
    assert later.status["phase"] == "Failed" and later.status["completionTime"] == ts(20) and not later.create_pods


@pytest.mark.parametrize("policy, deleted", [("Running", ["demo-worker-0"]), ("All", ["demo-worker-0", "demo-worker-1"]), ("None", [])])
def test_clean_pod_policy(make_job, policy, deleted):
    job = make_job(cleanPodPolicy=policy, backoffLimit=0)
    decision = run(job, [pod(0), pod(1, "Failed", exit_code=1)], running_status(job), now=20)
    assert decision.status["phase"] == "Failed" and sorted(decision.delete_pods) == deleted


def test_status_patch_removes_cleared_keys():
    assert status_patch({"phase": "Restarting", "restartTime": "x"}, {"phase": "Created"}) == {"phase": "Created", "restartTime": None}
    assert status_patch({"phase": "Running"}, {"phase": "Running"}) == {}


# ============================================================================================ suspend
def test_suspend_stops_the_gang_and_resume_starts_the_next_one(make_job):
    running = running_status(make_job())
    suspended = run(make_job(suspend=True), gang(), running, now=30)
    status = suspended.status
    assert status["phase"] == "Suspended" and status["restarts"] == 1 and status["countedRestarts"] == 0
    assert sorted(suspended.delete_pods) == ["demo-worker-0", "demo-worker-1"] and not suspended.create_pods
    assert conditions(status)["Suspended"] == ("True", "JobSuspended") and conditions(status)["Running"][0] == "False"
    assert "JobSuspended" in [e.reason for e in suspended.events] and "failure" not in status
    still = run(make_job(suspend=True), [], status, now=100)
    assert still.status["phase"] == "Suspended" and not still.create_pods and not still.delete_pods
    resumed = run(make_job(), [], still.status, now=130)
    assert resumed.create_pods and resumed.status["suspendedSeconds"] == 100
    assert conditions(resumed.status)["Suspended"] == ("False", "JobResumed") and "JobResumed" in [e.reason for e in resumed.events]
    created = run(make_job(), gang("Pending", restart=1), still.status, now=131).status
    assert created["phase"] == "Created" and created["restarts"] == 1


def test_job_created_suspended_has_no_pods(make_job):
    decision = run(make_job(suspend=True), [])
    assert decision.status["phase"] == "Suspended" and decision.status["restarts"] == 0 and not decision.create_pods


def test_the_deadline_clock_pauses_while_suspended(make_job):
    job = make_job(activeDeadlineSeconds=100)
    previous = {**running_status(job), "suspendedSeconds": 50}  # started at -10: due at 140 instead of 90
    assert run(job, gang(), previous, now=120).status["phase"] == "Running"
    assert run(job, gang(), previous, now=140).status["phase"] == "Failed"
    assert run(make_job(activeDeadlineSeconds=100, suspend=True), gang(), running_status(job), now=500).status["phase"] == "Suspended"


def test_a_resume_is_not_lost_time(make_job):
    job = make_job()
    stepping = run(job, gang(), running_status(job), now=10, reported=reported(7)).status
    failed_before = {**stepping, "failure": {"reason": "Error", "time": ts(5)}}  # an older failure, before the last step
    suspended = run(make_job(suspend=True), gang(), failed_before, now=20).status
    resumed = run(job, gang("Pending", restart=1), suspended, now=30).status
    running = run(job, gang(restart=1), resumed, now=35).status
    first = run(job, gang(restart=1), running, now=40, reported=reported(8, pod_uid="pod-0-1")).status
    assert float(first.get("lostSeconds") or 0) == 0


def test_eval_loss_reaches_the_progress_from_the_scrape_and_from_the_final_state(make_job):
    from llm_operator.api.contract import final_state_line

    job = make_job()
    stepping = run(job, gang(), running_status(job), now=10, reported=reported(7, loss=2.5, evalLoss=2.75)).status
    assert stepping["progress"]["evalLoss"] == 2.75 and stepping["progress"]["loss"] == 2.5
    total = job.spec.training.steps
    final = final_state_line({"step": total, "totalSteps": total, "loss": 2.0, "evalLoss": 2.125, "outcome": "complete",
                              "lastCheckpoint": {"step": total, "tag": f"global_step{total}"}})
    done = run(job, [pod(0, "Succeeded", exit_code=0, finished=20, message=f"training complete (exit 0)\n{final}"),
                     pod(1, "Succeeded", exit_code=0, finished=20)], stepping, now=30).status
    assert done["progress"]["evalLoss"] == 2.125 and done["progress"]["step"] == total


def test_reported_figures_reach_the_progress_rounded_to_4_significant_digits(make_job):
    """`kubectl get ltj` prints status.progress.loss as stored: 2.238, not 2.2378828525543213."""
    from llm_operator.api.contract import final_state_line

    job = make_job()
    stepping = run(job, gang(), running_status(job), now=10,
                   reported=reported(7, loss=2.2378828525543213, evalLoss=2.75, tokensPerSecond=30412.77, mfu=0.0123456)).status
    assert {k: stepping["progress"][k] for k in ("loss", "evalLoss", "tokensPerSecond", "mfu")} == {
        "loss": 2.238, "evalLoss": 2.75, "tokensPerSecond": 30410.0, "mfu": 0.01235}
    total = job.spec.training.steps
    final = final_state_line({"step": total, "totalSteps": total, "loss": 0.93912345, "outcome": "complete"})
    done = run(job, [pod(0, "Succeeded", exit_code=0, finished=20, message=f"training complete (exit 0)\n{final}"),
                     pod(1, "Succeeded", exit_code=0, finished=20)], stepping, now=30).status
    assert done["progress"]["loss"] == 0.9391 and done["progress"]["step"] == total


def test_bad_input_message_from_the_launcher_becomes_the_failure(make_job):
    """`llm-train launch` exits 5 with the preflight's problems; the job status says which field and file."""
    job = make_job()
    message = ("the job's input is not usable:\n  data.paths: /data/train.bin: 201 bytes is not a whole number of uint16 tokens "
               "(2 bytes each; data.tokenDtype): not a token file of this dtype, or truncated (exit 5)")
    status = run(job, [pod(0, "Failed", exit_code=5, message=message), pod(1)], running_status(job), now=10).status
    failure = status["failure"]
    assert failure["exitCode"] == 5 and "data.paths: /data/train.bin" in failure["message"] and "data.tokenDtype" in failure["message"]
    assert failure["reason"] == "InvalidInput" and status["phase"] == "Failed" and status["restarts"] == 0  # no restart can fix it


def test_a_run_resumed_on_another_world_size_says_so_in_an_event(make_job):
    from llm_operator.api.contract import final_state_line

    job = make_job()
    total = job.spec.training.steps
    resized = "resumed global_step10 (saved by 2 data-parallel ranks) on 1 through a universal checkpoint"
    final = final_state_line({"step": total, "totalSteps": total, "loss": 2.0, "outcome": "complete", "resized": resized})
    done = run(job, [pod(0, "Succeeded", exit_code=0, finished=20, message=f"training complete (exit 0)\n{final}"),
                     pod(1, "Succeeded", exit_code=0, finished=20)], running_status(job), now=30)
    assert [(e.type, e.message) for e in done.events if e.reason == "ResumedOnAnotherWorldSize"] == [("Normal", resized)]
