"""The kubelet's probes, served on the operator's event loop (an answer proves the loop runs):

- /healthz (liveness): the loop answers, and the leader-election thread runs (a replica whose elector died
  would stay a standby for ever, or lead without renewing).
- /readyz (readiness): the view is filled from a listing and the watches stream, whether this replica leads
  or stands by: a ready standby takes over at once. A rolling update waits for the new pod's readiness before
  it stops an old one, so the new replica's view is warm when the old leader hands the Lease over.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from aiohttp import web


@dataclasses.dataclass(frozen=True)
class ProbeState:
    synced: bool  # the view filled from a listing
    elected: bool  # leader election on
    elector_alive: bool
    leading: bool


def liveness(state: ProbeState) -> tuple[int, dict[str, Any]]:
    alive = not state.elected or state.elector_alive
    return (200 if alive else 500), {"alive": alive, "leading": state.leading}


def readiness(state: ProbeState) -> tuple[int, dict[str, Any]]:
    ready = state.synced and (not state.elected or state.elector_alive)
    role = "leader" if state.leading else "standby"
    return (200 if ready else 503), {"ready": ready, "role": role, "viewSynced": state.synced}


class ProbeServer:
    def __init__(self, port: int, state: Callable[[], ProbeState]):
        self.port, self.state = port, state
        self._runner: Optional[web.AppRunner] = None

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.get("/healthz", self._answer(liveness)), web.get("/readyz", self._answer(readiness))])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "0.0.0.0", self.port).start()

    def _answer(self, judge: Callable[[ProbeState], tuple[int, dict[str, Any]]]):
        async def handler(_request: web.Request) -> web.Response:
            status, body = judge(self.state())
            return web.json_response(body, status=status)
        return handler

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
