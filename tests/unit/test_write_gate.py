"""The write gate (write_gate.py) and its place in Kube.request: a standby reads, never writes."""

import threading

import pytest

from llm_operator.kube import Kube
from llm_operator.write_gate import WriteGate, WriteRefused


class Recording(Kube):
    def __init__(self, gate):
        super().__init__(api_client=object(), gate=gate)
        self.sent = []

    def _request(self, method, path, body, query, content_type, timeout):
        self.sent.append(method)
        return {}


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_shut_gate_refuses_every_write_before_it_is_sent(method):
    kube = Recording(WriteGate(open_=False))
    with pytest.raises(WriteRefused, match="not the leader"):
        kube.request(method, "/api/v1/namespaces/x/pods")
    assert kube.sent == []


def test_reads_pass_a_shut_gate():
    kube = Recording(WriteGate(open_=False))
    kube.request("GET", "/api/v1/pods")
    assert kube.sent == ["GET"]


def test_a_dry_run_passes_a_shut_gate():
    """Start-up discovery (a dry-run create of a probe PodGroup) runs on a standby: it persists nothing."""
    kube = Recording(WriteGate(open_=False))
    kube.dry_run_create({"kind": "PodGroup", "apiVersion": "scheduling.k8s.io/v1beta1", "metadata": {"namespace": "x", "name": "probe"}})
    assert kube.sent == ["POST"]
    with pytest.raises(WriteRefused):
        kube.create({"kind": "Pod", "metadata": {"namespace": "x", "name": "p"}})


def test_an_open_gate_passes_writes():
    kube = Recording(WriteGate(open_=True))
    kube.create({"kind": "Pod", "metadata": {"namespace": "x", "name": "p"}})
    assert kube.sent == ["POST"]


def test_drain_waits_for_the_writes_in_flight():
    gate = WriteGate(open_=True)
    gate.enter("POST x")
    gate.close()
    assert gate.drain(0.05) is False
    threading.Timer(0.05, gate.leave).start()
    assert gate.drain(5) is True
