"""One replica of the operator among several: who it is (its identity, in the Lease and in every request's
User-Agent, so the API server's audit log shows which replica wrote), and what the rest of the operator sees
of the election (Leadership: the write gate and an awaitable "this replica leads")."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from importlib import metadata
from typing import Callable, Mapping, Optional

from .write_gate import WriteGate

DISTRIBUTION = "llm-training-operator"


def replica_identity(env: Mapping[str, str] = os.environ) -> str:
    """The pod's name (else the host's) and a random suffix, as controller-runtime's: a restarted pod of the same
    name is another candidate, never mistaken for the holder it was."""
    return f"{env.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4()}"


def lease_namespace(env: Mapping[str, str] = os.environ) -> str:
    return env.get("POD_NAMESPACE") or "default"


def operator_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def user_agent(identity: str, version: Optional[str] = None) -> str:
    return f"{DISTRIBUTION}/{version or operator_version()} ({identity})"


class Leadership:
    """Opens the write gate and wakes the jobs' tasks when this replica starts leading. Without leader election
    (--no-leader-election) it leads from the start."""

    def __init__(self, gate: WriteGate, elected: bool):
        """elected: leader election is on (else: leading from the start, the gate open)."""
        self.gate, self.elected = gate, elected
        self._leading: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._listeners: list[Callable[[bool], None]] = []
        if not elected:
            gate.open()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the event loop the jobs' tasks run on (Kopf's, at its start-up)."""
        self._loop = loop
        self._leading = asyncio.Event()
        if self.gate.is_open:
            self._leading.set()

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """listener(leading), called on the event loop."""
        self._listeners.append(listener)

    @property
    def leading(self) -> bool:
        return self.gate.is_open

    def became_leader(self) -> None:
        """From any thread (the elector's)."""
        self.gate.open()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._set, True)

    def step_down(self) -> None:
        """From any thread: no write passes from now on."""
        self.gate.close()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._set, False)

    def _set(self, leading: bool) -> None:
        assert self._leading is not None
        if leading:
            self._leading.set()
        else:
            self._leading.clear()
        for listener in self._listeners:
            listener(leading)

    async def wait_leading(self) -> None:
        if self._leading is None:  # not attached (tests that drive the tasks without Kopf)
            self.attach(asyncio.get_running_loop())
        assert self._leading is not None
        await self._leading.wait()
