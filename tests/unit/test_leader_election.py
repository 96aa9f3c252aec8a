"""The elector (leader_election.py) against an in-memory Lease API with the API server's optimistic concurrency:
a PUT carrying a stale resourceVersion gets 409, as does a POST of a Lease that exists."""

import copy
import threading

import pytest
from kubernetes.client.exceptions import ApiException

from llm_operator.leader_election import Attempt, Elector, lease_path
from llm_operator.lease import Timing

NS = "ops"
PATH = lease_path(NS, "llm-training-operator")


class LeaseApi:
    def __init__(self):
        self.lease = None
        self.version = 0
        self.down = False  # the API server unreachable
        self.writes: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def request(self, method, path, body=None, timeout=None, **_):
        with self.lock:
            if self.down:
                raise OSError("connection refused")
            if method == "GET":
                assert path == PATH
                if self.lease is None:
                    raise ApiException(status=404, reason="Not Found")
                return copy.deepcopy(self.lease)
            if method == "POST":
                assert path == lease_path(NS)
                if self.lease is not None:
                    raise ApiException(status=409, reason="AlreadyExists")
                return self._store(method, body)
            if method == "PUT":
                if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
                    raise ApiException(status=409, reason="Conflict")
                return self._store(method, body)
            raise AssertionError(method)

    def _store(self, method, body):
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        self.writes.append((method, copy.deepcopy(self.lease["spec"])))
        return copy.deepcopy(self.lease)

    @property
    def holder(self):
        return self.lease["spec"]["holderIdentity"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def api():
    return LeaseApi()


def elector(api, identity, clock, **kwargs):
    return Elector(api, NS, identity, monotonic=clock, **kwargs)


def test_first_candidate_creates_the_lease_and_the_second_waits(api):
    clock = Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew() is Attempt.HELD
    assert api.writes[0][0] == "POST" and api.holder == "a" and api.lease["spec"]["leaseDurationSeconds"] == 15
    assert b.try_acquire_or_renew() is Attempt.TAKEN
    clock.now += 14
    assert b.try_acquire_or_renew() is Attempt.TAKEN
    assert api.holder == "a"


def test_a_standby_takes_over_a_lease_unrenewed_for_its_duration(api):
    clock = Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.try_acquire_or_renew()
    assert b.try_acquire_or_renew() is Attempt.TAKEN  # b first sees the record now
    clock.now += 15
    assert b.try_acquire_or_renew() is Attempt.HELD
    assert api.holder == "b" and api.lease["spec"]["leaseTransitions"] == 1


def test_renewals_keep_a_standby_out_however_long(api):
    clock = Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.try_acquire_or_renew()
    for _ in range(20):
        clock.now += 2
        assert a.try_acquire_or_renew() is Attempt.HELD
        assert b.try_acquire_or_renew() is Attempt.TAKEN
    assert api.holder == "a" and api.lease["spec"]["leaseTransitions"] == 0


def test_a_write_between_read_and_write_is_a_conflict_not_a_takeover(api):
    clock = Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    clock.now += 15
    real = api.request

    def renewal_sneaks_in(method, path, body=None, **kw):
        answer = real(method, path, body, **kw)
        if method == "GET":
            a.try_acquire_or_renew()  # a renews after b has read
        return answer

    api.request = renewal_sneaks_in
    assert b.try_acquire_or_renew() is Attempt.TAKEN
    api.request = real
    assert api.holder == "a"


def test_release_clears_the_holder_and_a_standby_takes_over_at_once(api):
    clock = Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.try_acquire_or_renew()
    a.leading.set()
    assert b.try_acquire_or_renew() is Attempt.TAKEN
    order = []
    assert a.stop_and_release(lambda: order.append(("before release", api.holder))) is True
    assert order == [("before release", "a")]  # the writes were shut while a still held the Lease
    assert api.lease["spec"]["holderIdentity"] == "" and api.lease["spec"]["leaseDurationSeconds"] == 1
    assert not a.leading.is_set()
    assert b.try_acquire_or_renew() is Attempt.HELD  # no waiting out the duration


def test_a_standby_has_nothing_to_release(api):
    a, b = elector(api, "a", Clock()), elector(api, "b", Clock())
    a.try_acquire_or_renew()
    a.leading.set()
    called = []
    assert b.stop_and_release(lambda: called.append(1)) is False
    assert called == [] and api.holder == "a"


def test_release_does_not_clear_a_lease_someone_else_took(api):
    clock = Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.try_acquire_or_renew()
    a.leading.set()
    b.try_acquire_or_renew()
    clock.now += 15
    b.try_acquire_or_renew()  # a was paused past the duration: b holds it now
    assert a.stop_and_release() is False
    assert api.holder == "b"


def test_an_unreachable_api_server_is_a_failed_attempt(api):
    a = elector(api, "a", Clock())
    api.down = True
    assert a.try_acquire_or_renew() is Attempt.FAILED


FAST = Timing(lease_seconds=1, renew_deadline_seconds=0.4, retry_seconds=0.05)


def test_a_leader_that_cannot_renew_for_the_deadline_has_lost(api):
    lost, started = threading.Event(), threading.Event()
    a = Elector(api, NS, "a", timing=FAST, on_started=started.set, on_lost=lost.set)
    a.start()
    assert started.wait(5) and a.leading.is_set()
    api.down = True
    assert lost.wait(5), "on_lost was never called"
    assert not a.leading.is_set()
    a._thread.join(5)
    assert not a.alive


def test_a_leader_that_sees_another_holder_has_lost_at_once(api):
    lost, started = threading.Event(), threading.Event()
    a = Elector(api, NS, "a", timing=Timing(lease_seconds=60, renew_deadline_seconds=50, retry_seconds=0.05),
                on_started=started.set, on_lost=lost.set)
    a.start()
    assert started.wait(5)
    with api.lock:  # someone took it (a was paused past the duration, as seen elsewhere)
        api.lease["spec"]["holderIdentity"] = "b"
        api.lease["metadata"]["resourceVersion"] = "999"
    assert lost.wait(5), "on_lost was never called though the renew deadline is far"


def test_two_electors_one_leader_and_a_hand_over_on_release(api):
    started = {"a": threading.Event(), "b": threading.Event()}
    timing = Timing(lease_seconds=5, renew_deadline_seconds=4, retry_seconds=0.05)  # a busy machine's pauses lose nothing
    electors = {n: Elector(api, NS, n, timing=timing, on_started=started[n].set) for n in "ab"}
    for e in electors.values():
        e.start()
    for _ in range(500):
        if any(event.is_set() for event in started.values()):
            break
        threading.Event().wait(0.01)
    first = next(name for name, event in started.items() if event.is_set())
    second = "b" if first == "a" else "a"
    assert not started[second].is_set() and api.holder == first
    assert electors[first].stop_and_release() is True
    assert started[second].wait(5), "the standby did not take the released Lease"
    assert api.holder == second
    electors[second].stop_and_release()
