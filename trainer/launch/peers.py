"""Waiting for the job's peers: DNS names that must resolve, TCP endpoints that must accept a connection."""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import Optional

from .common import log

DNS_HINT = (
    "usually the pod is not scheduled or has no IP yet (Pending: see `kubectl get pods` and its events), "
    "the headless Service is missing or does not select the pod, the pod's hostname/subdomain do not "
    "match the Service, or the Service lacks publishNotReadyAddresses: true"
)
TCP_HINT = (
    "usually sshd on that pod is not running yet or crashed (see that pod's log), "
    "or a NetworkPolicy blocks the port"
)


@dataclasses.dataclass
class Peer:
    host: str
    port: Optional[int] = None  # None: DNS only
    error: Optional[str] = "not tried yet"
    resolved: bool = False

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def probe(peer: Peer, connect_timeout: float) -> Optional[str]:
    """None when the peer is ready, else why not."""
    try:
        infos = socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"does not resolve: {e.strerror or e}"
    peer.resolved = True
    if peer.port is None:
        return None
    last = "no address"
    for family, type_, proto, _, addr in infos:
        try:
            with socket.socket(family, type_, proto) as s:
                s.settimeout(connect_timeout)
                s.connect(addr)
                return None
        except OSError as e:
            last = f"{addr[0]}: {e.strerror or e.__class__.__name__}"
    return f"no connection: {last}"


def wait_for_peers(
    peers: list[Peer], timeout: float, *, interval: float = 1.0, progress_every: float = 10.0, stop=lambda: False
) -> list[Peer]:
    """Probe until all peers are ready, ``timeout`` passes or ``stop()``; return the peers not ready."""
    if not peers:
        return []
    start = time.monotonic()
    deadline = start + timeout
    next_progress = start + progress_every
    pending = list(peers)
    log("info", "waiting for peers", peers=[str(p) for p in pending], timeout_s=timeout)
    while True:
        for peer in pending:
            peer.error = probe(peer, connect_timeout=max(0.2, min(3.0, deadline - time.monotonic())))
        pending = [p for p in pending if p.error]
        now = time.monotonic()
        if not pending:
            log("info", "all peers ready", peers=len(peers), waited_s=round(now - start, 1))
            return []
        if now >= deadline or stop():
            return pending
        if now >= next_progress:
            next_progress = now + progress_every
            log("info", "still waiting for peers", ready=len(peers) - len(pending), total=len(peers),
                waited_s=round(now - start, 1), pending={str(p): p.error for p in pending})
        time.sleep(max(0.0, min(interval, deadline - now)))


def describe_missing(missing: list[Peer], timeout: float) -> str:
    unresolved = [p for p in missing if not p.resolved]
    silent = [p for p in missing if p.resolved]
    parts = [f"peers not ready after {timeout:g}s."]
    if unresolved:
        parts.append("Never resolved: " + ", ".join(f"{p.host} ({p.error})" for p in unresolved) + f"; {DNS_HINT}.")
    if silent:
        parts.append("Never answered: " + ", ".join(f"{p} ({p.error})" for p in silent) + f"; {TCP_HINT}.")
    return " ".join(parts)
