"""Gang creation waits while the event loop is behind (issue 22).

A job's first reconcile renders its children and creates them: the most CPU a job costs, and work that can
wait a moment. The watch events (Kopf's processing, the view, the jobs' tasks) run on the one event loop
thread, and compete for the GIL with every reconcile thread. When the operator is short of CPU (the chart
requests 100m) 16 threads rendering gangs leave the loop a sliver, and the events that say a gang came up,
failed or ended wait behind them: the status written a minute after the pods ran. So the loop's backlog is
measured (how long a task that yields waits to run again), and while it is over LAG_LIMIT_SECONDS one first
reconcile runs at a time, not RECONCILE_THREADS: gang creation keeps going, slower, and the loop catches up.
With CPU to spare the backlog stays near zero and nothing waits.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Optional

LAG_LIMIT_SECONDS = 0.25  # a loop this far behind gives gang creation one thread (a CPU quota alone freezes it up to 0.09 s in 0.1)
SAMPLE_SECONDS = 0.1


def first_reconciles_allowed(lag: float, wide: int, limit: float = LAG_LIMIT_SECONDS) -> int:
    """How many first reconciles may run at once with the event loop `lag` seconds behind (never none)."""
    return wide if lag <= limit else 1


class Headroom:
    """A gate for first reconciles whose width follows the loop's lag. Waiters queue in arrival order and are
    admitted one by one as slots free up: with 10,000 jobs waiting, a condition's notify_all woke every one of
    them at every sample and every release, to find one slot (issue 22: more than half the operator's CPU)."""

    def __init__(self, wide: int):
        self.wide = wide
        self.lag = 0.0
        self._running = 0
        self._waiting: collections.deque[asyncio.Future] = collections.deque()
        self._monitor: Optional[asyncio.Task] = None

    def _start_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = asyncio.get_running_loop().create_task(self._measure(), name="event loop lag")

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            yielded = loop.time()
            await asyncio.sleep(0)  # back at the end of the ready queue: what runs meanwhile is the backlog
            self.lag = loop.time() - yielded
            self._admit()

    def _admit(self) -> None:
        """Wake the longest waiting first reconciles, as many as the lag allows now."""
        while self._waiting and self._running < first_reconciles_allowed(self.lag, self.wide):
            waiter = self._waiting.popleft()
            if not waiter.done():  # else cancelled while waiting (its job deleted, the operator stopping)
                waiter.set_result(None)
                self._running += 1

    async def acquire(self) -> None:
        self._start_monitor()
        if not self._waiting and self._running < first_reconciles_allowed(self.lag, self.wide):
            self._running += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # admitted, then cancelled before it ran: the slot goes on
                self.release()
            raise

    def release(self) -> None:
        self._running -= 1
        self._admit()

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
