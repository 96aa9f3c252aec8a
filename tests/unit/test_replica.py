"""A replica's identity, User-Agent and probes (replica.py, probes.py), and the jobs' tasks waiting for leadership."""

import asyncio
import re

import pytest

from llm_operator.probes import ProbeState, liveness, readiness
from llm_operator.replica import Leadership, lease_namespace, replica_identity, user_agent
from llm_operator.write_gate import WriteGate


def test_identity_is_the_pod_name_and_a_random_suffix():
    a, b = replica_identity({"POD_NAME": "op-7f9c-x2"}), replica_identity({"POD_NAME": "op-7f9c-x2"})
    assert a.startswith("op-7f9c-x2_") and a != b  # a restarted pod of the same name is another candidate
    assert re.fullmatch(r"op-7f9c-x2_[0-9a-f-]{36}", a)


def test_identity_falls_back_to_the_host_name():
    import socket
    assert replica_identity({}).startswith(socket.gethostname() + "_")


def test_lease_namespace_is_the_pods_else_default():
    assert lease_namespace({"POD_NAMESPACE": "ops"}) == "ops" and lease_namespace({}) == "default"


def test_user_agent_names_the_replica():
    assert user_agent("op-1_abc", "0.1.0") == "llm-training-operator/0.1.0 (op-1_abc)"


@pytest.mark.parametrize("state, live, ready, role", [
    (ProbeState(synced=True, elected=True, elector_alive=True, leading=True), 200, 200, "leader"),
    (ProbeState(synced=True, elected=True, elector_alive=True, leading=False), 200, 200, "standby"),  # a warm standby is ready
    (ProbeState(synced=False, elected=True, elector_alive=True, leading=False), 200, 503, "standby"),  # watches not filled yet
    (ProbeState(synced=True, elected=True, elector_alive=False, leading=False), 500, 503, "standby"),  # the elector died
    (ProbeState(synced=True, elected=False, elector_alive=False, leading=True), 200, 200, "leader"),  # --no-leader-election
])
def test_probes(state, live, ready, role):
    assert liveness(state)[0] == live
    status, body = readiness(state)
    assert status == ready and body["role"] == role


def test_without_election_the_replica_leads_from_the_start():
    leadership = Leadership(WriteGate(open_=False), elected=False)
    assert leadership.leading and leadership.gate.is_open


def test_tasks_wait_for_leadership_and_go_when_it_comes():
    async def scenario():
        leadership = Leadership(WriteGate(open_=False), elected=True)
        leadership.attach(asyncio.get_running_loop())
        seen = []
        leadership.on_change(seen.append)
        waiting = asyncio.ensure_future(leadership.wait_leading())
        await asyncio.sleep(0.01)
        assert not waiting.done() and not leadership.gate.is_open
        await asyncio.to_thread(leadership.became_leader)  # from the elector's thread
        await asyncio.wait_for(waiting, 5)
        leadership.step_down()
        await asyncio.sleep(0)
        assert not leadership.gate.is_open and seen == [True, False]

    asyncio.run(scenario())


def test_kopfs_requests_carry_the_replicas_user_agent(tmp_path, monkeypatch):
    """Kopf has no setting for the header: the login handler hands it a session that carries it."""
    import logging

    import kopf

    from llm_operator.main import kopf_login

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    from kubernetes.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))  # read from $KUBECONFIG at import
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    async def login():
        info = await kopf_login("llm-training-operator/0.1.0 (op-1_abc)")(logger=logging.getLogger("t"), settings=kopf.OperatorSettings())
        try:
            return info.server, dict(info.aiohttp_session.headers)
        finally:
            await info.aiohttp_session.close()

    from kubernetes import client

    saved = client.Configuration.get_default_copy()
    try:
        server, headers = asyncio.run(login())
    finally:
        client.Configuration.set_default(saved)  # Kopf's login loaded the kubeconfig into the client's default
    assert server == "https://127.0.0.1:1"
    assert headers == {"Authorization": "Bearer abc", "User-Agent": "llm-training-operator/0.1.0 (op-1_abc)"}


def test_a_standbys_job_task_reconciles_nothing_until_it_leads_then_at_once():
    from test_reconcile import CountingReconciler

    from llm_operator.job_loop import JobLoops

    async def scenario():
        leadership = Leadership(WriteGate(open_=False), elected=True)
        leadership.attach(asyncio.get_running_loop())
        reconciler = CountingReconciler()
        loops = JobLoops(reconciler, progress_interval=0, leadership=leadership)
        task = asyncio.create_task(loops.run("ns", "job"))
        for _ in range(20):
            loops.poke("ns", "job")  # watch events reach the standby's view and its task …
            await asyncio.sleep(0.005)
        assert reconciler.calls == 0 and loops.sync.synced  # … which is warm, and reconciles nothing
        await asyncio.to_thread(leadership.became_leader)
        while reconciler.calls == 0:
            await asyncio.sleep(0.005)  # no poke needed: the takeover reconciles at once
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(scenario(), 10))
