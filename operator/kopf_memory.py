"""Kopf's per-object memory, kept for no object.

Kopf remembers a ResourceMemory (a memo, an error throttler, indexing and daemon state) for every object it has
seen, until that object's DELETED event: every job and every pod, running or long finished. This operator has
only on.event handlers (tests/unit/test_handlers.py holds it to that): no daemon, timer, index or change
handler reads a memory after the event it was made for, so none needs keeping (issue 22: memory must not
grow with history). The one thing lost is the throttling of an object whose handler keeps raising, and the
handlers here only feed the view.
"""

from __future__ import annotations

from typing import Any

from kopf._core.reactor.inventory import ResourceMemories, ResourceMemory


class EventOnlyMemories(ResourceMemories):
    async def recall(self, raw_body: Any, *, memobase: Any = None, noticed_by_listing: bool = False, ephemeral: bool = False) -> ResourceMemory:
        return await super().recall(raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing, ephemeral=True)
