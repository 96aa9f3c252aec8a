"""pod_watch.py: the pods' events from Kopf's watch stream reach JobLoops.on_pod in order, past Kopf's per-object
workers; the stream's own marks are skipped, a failing handler or stream is logged and the watch goes on."""

from __future__ import annotations

import asyncio

import kopf
from kopf._cogs.clients import watching

from llm_operator import pod_watch


def pod(name: str, version: str, namespace: str = "ns") -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": version}}


def test_listed_and_streamed_pods_reach_the_handler_in_order_and_marks_do_not(monkeypatch):
    streams = []

    async def stream(*, settings, resource, namespace):
        streams.append((resource.plural, namespace))
        for event in [{"type": None, "object": pod("a", "1", namespace)}, watching.Bookmark.LISTED,
                      {"type": "ADDED", "object": pod("b", "2", namespace)}, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "3"}}},
                      {"type": "MODIFIED", "object": pod("a", "4", namespace)}, {"type": "DELETED", "object": pod("b", "5", namespace)}]:
            yield event
        await asyncio.Event().wait()  # a watch never ends by itself

    monkeypatch.setattr(watching, "infinite_watch", stream)
    seen = []

    async def scenario():
        task = asyncio.create_task(pod_watch.watch_pods(kopf.OperatorSettings(), ["ns", "other"], lambda t, p: seen.append((p["metadata"]["namespace"], t, p["metadata"]["name"]))))
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(scenario())
    assert streams == [("pods", "ns"), ("pods", "other")]
    in_order = [(None, "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert [(t, name) for ns, t, name in seen if ns == "ns"] == in_order and [(t, name) for ns, t, name in seen if ns == "other"] == in_order
    assert len(seen) == 8


def test_a_failing_handler_or_stream_does_not_end_the_watch(monkeypatch, caplog):
    attempts = []

    async def stream(*, settings, resource, namespace):
        attempts.append(namespace)
        yield {"type": "ADDED", "object": pod("bad", "1")}
        yield {"type": "ADDED", "object": pod("good", "2")}
        if len(attempts) == 1:
            raise kopf._cogs.clients.errors.APIForbiddenError({"message": "pods is forbidden"}, status=403, headers={})
        await asyncio.Event().wait()

    def on_pod(type_, body):
        if body["metadata"]["name"] == "bad":
            raise KeyError("status")
        seen.append(body["metadata"]["name"])

    monkeypatch.setattr(watching, "infinite_watch", stream)
    monkeypatch.setattr(pod_watch, "RETRY_SECONDS", (0.01, 0.01))
    seen: list[str] = []

    async def scenario():
        task = asyncio.create_task(pod_watch.watch_pods(kopf.OperatorSettings(), None, on_pod))
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(scenario())
    assert attempts == [None, None] and seen == ["good", "good"]
    assert "could not be handled" in caplog.text and "watching pods in all namespaces failed" in caplog.text


def test_kopfs_listings_are_paged_as_the_views_own():
    """Kopf lists whole by default: at start-up with 10,000 finished jobs, every pod in one response (issue 22)."""
    from llm_operator.kube import LIST_PAGE
    from llm_operator.main import configure_settings

    settings = kopf.OperatorSettings()
    assert settings.watching.chunk_size is None
    configure_settings(settings)
    assert settings.watching.chunk_size == LIST_PAGE
