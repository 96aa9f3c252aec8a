"""The one door of the operator's writes to the API server (kube.py): open while this replica leads, shut
while it is a standby or stepping down. A standby's watches and view stay warm, but any create, patch or
delete it would send is refused here, whichever code path tried; a leader stepping down shuts the door,
then waits for the writes already in flight before it gives the Lease up (leader_election.py)."""

from __future__ import annotations

import threading
import time


class WriteRefused(Exception):
    """A write while this replica does not lead (it is a standby, or it is stepping down)."""


class WriteGate:
    def __init__(self, open_: bool):
        self._open = open_
        self._in_flight = 0
        self._changed = threading.Condition()

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        with self._changed:
            self._open = True

    def close(self) -> None:
        with self._changed:
            self._open = False

    def enter(self, what: str) -> None:
        """Before a write: raises WriteRefused while shut. Pair with leave()."""
        with self._changed:
            if not self._open:
                raise WriteRefused(f"not the leader: {what} refused")
            self._in_flight += 1

    def leave(self) -> None:
        with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until no write is in flight (call after close()); False if some still were after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True
