"""The operator's writes to the API server: a fixed number in flight at once, for all jobs together, and the
gangs' pods first. When 200 jobs arrive at once, what their users wait for is their workers; the status
writes and Events that follow each gang's creation wait until the writers are free (a job's next reconcile
waits for its own, so it never decides on a status it has not written yet)."""

from __future__ import annotations

import heapq
import itertools
import threading
from concurrent.futures import Future
from typing import Any, Callable

CREATE = 0  # the children of a gang being created
FINISH = 1  # status, Events, stopping pods, deleting an expired job


class Writers:
    def __init__(self, threads: int, name: str = "write"):
        self._queue: list[tuple[int, int, Future, Callable, tuple]] = []
        self._order = itertools.count()  # FIFO within a priority
        self._ready = threading.Condition()
        for i in range(threads):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def submit(self, priority: int, call: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        with self._ready:
            heapq.heappush(self._queue, (priority, next(self._order), future, call, args))
            self._ready.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                _, _, future, call, args = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call(*args))
            except BaseException as exc:  # noqa: BLE001 (handed to whoever waits)
                future.set_exception(exc)
