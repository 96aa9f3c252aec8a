"""Threads that serve calls by priority: the operator's writes to the API server (a fixed number in flight at
once, for all jobs together) and its reconciles (job_loop.py).

Writes, first to last: a status write that changes what a user sees (a job's phase or conditions: its gang
came up, failed, ended), then the children of gangs being created, then the rest (a ready count, progress,
Events, stopping pods). When 1000 jobs arrive at once, a job whose gang came up must not wait behind the
other 999 gangs' creations: `kubectl get ltj`, Kueue, GitOps health and the stall and deadline clocks read
that status (issue 22: with the operator held to 100m of CPU the Running phase was written up to a minute
after the pods ran). A job's next reconcile waits for its own writes, so it never decides on a status it has
not written yet."""

from __future__ import annotations

import heapq
import itertools
import threading
from concurrent.futures import Future
from typing import Any, Callable, Mapping

STATUS = 0  # a status write that changes what a user sees (phase, conditions), with the rest of its decision
CREATE = 1  # the children of a gang being created
FINISH = 2  # the other status writes, Events, stopping pods, deleting an expired job

USER_VISIBLE_STATUS = frozenset({"phase", "conditions"})


def finish_priority(patch: Mapping[str, Any]) -> int:
    """The lane of a decision's writes: STATUS when its status patch changes the phase or the conditions."""
    return STATUS if USER_VISIBLE_STATUS & set(patch) else FINISH


class Writers:
    """Up to `threads` threads (started when first needed); the call with the lowest priority number first,
    FIFO within a priority."""

    def __init__(self, threads: int, name: str = "write"):
        self._queue: list[tuple[int, int, Future, Callable, tuple]] = []
        self._order = itertools.count()  # FIFO within a priority
        self._ready = threading.Condition()
        self._max_threads, self._name = threads, name
        self._started = self._idle = 0

    def submit(self, priority: int, call: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        with self._ready:
            heapq.heappush(self._queue, (priority, next(self._order), future, call, args))
            if self._idle < len(self._queue) and self._started < self._max_threads:
                threading.Thread(target=self._work, name=f"{self._name}-{self._started}", daemon=True).start()
                self._started += 1
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._idle += 1
                    self._ready.wait()
                    self._idle -= 1
                _, _, future, call, args = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call(*args))
            except BaseException as exc:  # noqa: BLE001 (handed to whoever waits)
                future.set_exception(exc)
