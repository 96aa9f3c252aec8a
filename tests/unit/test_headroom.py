"""headroom.py: gang creation narrows to one first reconcile at a time while the event loop is behind, and is
never stopped."""

from __future__ import annotations

import asyncio
import time

from llm_operator.headroom import LAG_LIMIT_SECONDS, Headroom, first_reconciles_allowed


def test_first_reconciles_narrow_to_one_while_the_loop_is_behind():
    assert first_reconciles_allowed(0.0, 16) == 16
    assert first_reconciles_allowed(LAG_LIMIT_SECONDS, 16) == 16
    assert first_reconciles_allowed(LAG_LIMIT_SECONDS * 1.01, 16) == 1
    assert first_reconciles_allowed(60.0, 16) == 1  # never none: creation goes on


def test_the_gate_holds_the_second_first_reconcile_while_lagging_and_lets_it_go_after():
    async def scenario():
        headroom = Headroom(wide=4)
        headroom._start_monitor()
        headroom._monitor.cancel()  # the lag is set by hand here
        headroom.lag = 10.0
        await headroom.acquire()
        second = asyncio.create_task(headroom.acquire())
        await asyncio.sleep(0.05)
        held = not second.done()
        headroom.release()
        await asyncio.wait_for(second, timeout=5)
        headroom.lag = 0.0
        await asyncio.wait_for(asyncio.gather(headroom.acquire(), headroom.acquire(), headroom.acquire()), timeout=5)
        return held, headroom._running

    assert asyncio.run(scenario()) == (True, 4)


def test_the_lag_is_measured_from_the_loops_backlog():
    async def scenario():
        headroom = Headroom(wide=4)
        headroom._start_monitor()

        async def busy():  # a loop that has 0.3 s of work queued at every turn
            while True:
                await asyncio.sleep(0)
                time.sleep(0.3)

        hog = asyncio.create_task(busy())
        await asyncio.sleep(1.5)
        hog.cancel()
        headroom.stop()
        return headroom.lag

    assert asyncio.run(scenario()) >= 0.3  # every sample waited for one turn of the hog (time.sleep: at least 0.3 s)


def gate_held_by_hand(wide: int, lag: float = 0.0) -> Headroom:
    headroom = Headroom(wide=wide)
    headroom._start_monitor()
    headroom._monitor.cancel()  # the lag is set by hand
    headroom.lag = lag
    return headroom


def test_waiters_pass_in_arrival_order_and_a_cancelled_one_takes_no_slot():
    async def scenario():
        headroom, passed = gate_held_by_hand(wide=1), []
        await headroom.acquire()

        async def job(name):
            await headroom.acquire()
            passed.append(name)

        tasks = {name: asyncio.create_task(job(name)) for name in ("a", "b", "c", "d")}
        await asyncio.sleep(0.01)
        tasks["b"].cancel()  # deleted while waiting
        for _ in range(3):
            headroom.release()
            await asyncio.sleep(0.01)
        return passed, headroom._running

    assert asyncio.run(scenario()) == (["a", "c", "d"], 1)


def test_an_admitted_waiter_cancelled_before_it_ran_gives_its_slot_on():
    async def scenario():
        headroom = gate_held_by_hand(wide=1)
        await headroom.acquire()
        first, second = asyncio.create_task(headroom.acquire()), asyncio.create_task(headroom.acquire())
        await asyncio.sleep(0.01)
        headroom.release()  # admits `first`...
        first.cancel()  # ...which is cancelled before it resumes
        await asyncio.wait_for(second, timeout=5)
        return headroom._running

    assert asyncio.run(scenario()) == 1


def test_a_release_wakes_one_waiter_not_all_of_them():
    """10,000 jobs waiting at start-up: a notify_all woke every waiter at every release and every lag sample, to find
    one slot (more than half the operator's CPU, issue 22). Counted as the callbacks the loop is given, not timed."""
    waiters = 300

    async def scenario():
        loop = asyncio.get_running_loop()
        headroom, scheduled = gate_held_by_hand(wide=1), [0]
        call_soon = loop.call_soon

        def counting(*args, **kwargs):
            scheduled[0] += 1
            return call_soon(*args, **kwargs)

        await headroom.acquire()
        tasks = [asyncio.create_task(headroom.acquire()) for _ in range(waiters)]
        await asyncio.sleep(0.01)
        loop.call_soon = counting
        for task in tasks:
            headroom.release()
            await task
        loop.call_soon = call_soon
        return scheduled[0]

    assert asyncio.run(scenario()) < 10 * waiters  # a herd: about waiters² / 2
