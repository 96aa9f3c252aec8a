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
        headroom._condition()
        headroom._monitor.cancel()  # the lag is set by hand here
        headroom.lag = 10.0
        await headroom.acquire()
        second = asyncio.create_task(headroom.acquire())
        await asyncio.sleep(0.05)
        held = not second.done()
        await headroom.release()
        await asyncio.wait_for(second, timeout=5)
        headroom.lag = 0.0
        await asyncio.wait_for(asyncio.gather(headroom.acquire(), headroom.acquire(), headroom.acquire()), timeout=5)
        return held, headroom._running

    assert asyncio.run(scenario()) == (True, 4)


def test_the_lag_is_measured_from_the_loops_backlog():
    async def scenario():
        headroom = Headroom(wide=4)
        headroom._condition()

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
