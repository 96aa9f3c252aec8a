"""The jobs' pods, watched beside Kopf's handlers: Kopf's own watch stream (its listing, reconnects, bookmarks and
relisting after 410 Gone, with the operator's label selector and timeouts), each event handed straight to
JobLoops.on_pod on the event loop.

Why not a Kopf on.event handler, as for jobs: pods are three events in four, and Kopf runs every event through a
worker task of its own per object (spawned anew for most pod events, as they come more than idle_timeout apart),
cause detection, a handler invocation with its logging and context objects, and an empty patch: about a fifth of
the operator's CPU at 300 jobs (issue 22), for a handler that only updates the view and wakes a job's task. That
handler is synchronous and cheap, so the stream calls it in order; nothing here awaits between an event and the
next, and one pod's events stay in order as the API server sent them.

Kopf 1.45's watch stream (`kopf._cogs.clients.watching`, pinned in pyproject.toml) needs Kopf's credentials
vault, which the operator's startup handler runs in: start it from there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional

import kopf
from kopf._cogs.clients import watching
from kopf._cogs.structs.references import NamespaceName, Resource

log = logging.getLogger(__name__)
RETRY_SECONDS = (1.0, 60.0)  # after a stream failed for good (Kopf retries connection errors itself): first, cap

PODS = Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True, verbs=frozenset({"list", "watch"}))


def deliver(event: Any, on_pod: Callable[[Optional[str], dict[str, Any]], None]) -> None:
    """One item of the stream: a pod event (type None: listed) to on_pod; the stream's own marks are skipped. A
    failing handler is logged, and the stream goes on (as Kopf does with an on.event handler)."""
    if isinstance(event, watching.Bookmark) or event.get("type") == "BOOKMARK":
        return
    try:
        on_pod(event["type"], event["object"])
    except Exception:
        log.exception("the pod event of %s could not be handled", (event.get("object") or {}).get("metadata", {}).get("name"))


async def watch_pods(settings: kopf.OperatorSettings, namespaces: Optional[list[str]],
                     on_pod: Callable[[Optional[str], dict[str, Any]], None]) -> None:
    """Until cancelled: every namespace's stream (None: one cluster-wide)."""

    async def stream(namespace: Optional[str]) -> None:
        failures = 0
        while True:
            try:
                async for event in watching.infinite_watch(settings=settings, resource=PODS,
                                                           namespace=NamespaceName(namespace) if namespace else None):
                    failures = 0
                    deliver(event, on_pod)
            except Exception as exc:  # forbidden (RBAC not there yet), or an API server error: never silently gone
                failures += 1
                delay = min(RETRY_SECONDS[0] * 2 ** (failures - 1), RETRY_SECONDS[1])
                log.error("watching pods in %s failed (retry in %.0f s): %s", namespace or "all namespaces", delay, exc)
                await asyncio.sleep(delay)

    watched: list[Optional[str]] = list(namespaces) if namespaces else [None]
    await asyncio.gather(*(stream(namespace) for namespace in watched))
