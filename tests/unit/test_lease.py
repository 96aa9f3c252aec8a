"""Leader election decisions (lease.py): tables of Lease records, identities and clocks."""

from datetime import datetime, timezone

import pytest

from llm_operator import lease
from llm_operator.lease import Observation, Record, Timing

ME, OTHER = "op-a_1", "op-b_2"
WALL = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
STAMP = "2026-01-01T12:00:00.123456Z"


def record(holder=OTHER, seconds=15, renew="2026-01-01T11:59:58.000000Z", transitions=3, rv="7"):
    return Record(holder=holder, lease_seconds=seconds, acquire_time="2026-01-01T11:00:00.000000Z", renew_time=renew,
                  transitions=transitions, resource_version=rv)


def test_record_of_a_lease_read_from_the_api():
    got = Record.of({"metadata": {"resourceVersion": "42"},
                     "spec": {"holderIdentity": OTHER, "leaseDurationSeconds": 15, "acquireTime": "a", "renewTime": "r", "leaseTransitions": 2}})
    assert got == Record(holder=OTHER, lease_seconds=15, acquire_time="a", renew_time="r", transitions=2, resource_version="42")


def test_record_of_an_empty_lease():
    assert Record.of({"metadata": {}, "spec": {}}) == Record("", 0, None, None, 0, "")


@pytest.mark.parametrize("previous, new, now, seen_at", [
    (None, record(), 100.0, 100.0),  # first sight: the clock starts now
    (Observation(record(), 90.0), record(rv="8"), 100.0, 90.0),  # same record (another resourceVersion only): unchanged
    (Observation(record(), 90.0), record(renew="2026-01-01T11:59:59.000000Z"), 100.0, 100.0),  # renewed: restarts
    (Observation(record(), 90.0), record(holder=ME), 100.0, 100.0),  # new holder: restarts
    (Observation(record(), 90.0), record(holder=""), 100.0, 100.0),  # released: restarts
])
def test_observe_restarts_the_clock_only_when_the_record_changes(previous, new, now, seen_at):
    assert lease.observe(previous, new, now) == Observation(new, seen_at)


@pytest.mark.parametrize("rec, seen_at, now, expected", [
    (record(holder=""), 100.0, 100.0, True),  # released: free at once
    (record(holder=ME), 100.0, 100.0, True),  # ours: renew
    (record(), 100.0, 100.0, False),  # another's, just seen
    (record(), 100.0, 114.9, False),  # another's, not yet expired by our clock
    (record(), 100.0, 115.0, True),  # unchanged for its whole duration: expired
    (record(seconds=1), 100.0, 101.0, True),  # a duration of 1 s (another implementation's release) expires fast
])
def test_may_take(rec, seen_at, now, expected):
    assert lease.may_take(Observation(rec, seen_at), ME, now) is expected


def test_expiry_is_judged_by_our_clock_not_the_renew_time():
    """A renewTime hours in the past (the holder's clock is behind) is not an expired Lease: the record was just seen."""
    stale_stamp = record(renew="2020-01-01T00:00:00.000000Z")
    assert lease.may_take(lease.observe(None, stale_stamp, 500.0), ME, 500.0) is False


@pytest.mark.parametrize("rec, expected", [
    (None, {"holderIdentity": ME, "leaseDurationSeconds": 15, "renewTime": STAMP, "acquireTime": STAMP, "leaseTransitions": 0}),
    (record(holder=ME), {"holderIdentity": ME, "leaseDurationSeconds": 15, "renewTime": STAMP,
                         "acquireTime": "2026-01-01T11:00:00.000000Z", "leaseTransitions": 3}),  # renewal: same term
    (record(), {"holderIdentity": ME, "leaseDurationSeconds": 15, "renewTime": STAMP, "acquireTime": STAMP, "leaseTransitions": 4}),
    (record(holder=""), {"holderIdentity": ME, "leaseDurationSeconds": 15, "renewTime": STAMP, "acquireTime": STAMP, "leaseTransitions": 4}),
])
def test_claim(rec, expected):
    assert lease.claim(rec, ME, Timing(), WALL) == expected


def test_release_clears_the_holder_as_client_go_does():
    assert lease.release(record(holder=ME), WALL) == {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": STAMP,
                                                      "renewTime": STAMP, "leaseTransitions": 3}


@pytest.mark.parametrize("last, now, overdue", [(100.0, 109.9, False), (100.0, 110.0, True), (100.0, 130.0, True)])
def test_renewal_overdue_after_the_renew_deadline(last, now, overdue):
    assert lease.renewal_overdue(last, now, Timing()) is overdue


class FixedRandom:
    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


@pytest.mark.parametrize("draw, wait", [(0.0, 2.0), (1.0, 2.2)])
def test_standby_wait_is_the_retry_period_with_a_little_jitter(draw, wait):
    assert lease.standby_wait(Timing(), FixedRandom(draw)) == pytest.approx(wait)


@pytest.mark.parametrize("kwargs, field", [
    ({"lease_seconds": 10, "renew_deadline_seconds": 10}, "lease duration"),
    ({"renew_deadline_seconds": 2.1, "retry_seconds": 2}, "renew deadline"),
    ({"retry_seconds": 0, "renew_deadline_seconds": 1}, "retry period"),
    ({"lease_seconds": 0.6, "renew_deadline_seconds": 0.4, "retry_seconds": 0.1}, "whole number of seconds"),
])
def test_timing_refuses_an_unsound_combination_by_name(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Timing(**kwargs)


def test_default_timing_is_controller_runtimes():
    assert (Timing().lease_seconds, Timing().renew_deadline_seconds, Timing().retry_seconds) == (15, 10, 2)
