"""Training progress for the job status, pulled from rank 0's Prometheus endpoint.

Pull, like Prometheus itself: worker pods hold no API credentials (their ServiceAccount token is
not even mounted), so the operator reads `llmtrain_*` from worker 0's /metrics and writes the
status. A job's progress is re-read every interval while it runs; a change triggers a reconcile.
"""

from __future__ import annotations

import logging
import math
import threading
import urllib.request
from typing import Callable

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

JobKey = tuple[str, str]  # (namespace, name)
FIELDS = {
    "llmtrain_step": "step",
    "llmtrain_loss": "loss",
    "llmtrain_tokens_per_second": "tokensPerSecond",
    "llmtrain_mfu": "mfu",
    "llmtrain_last_checkpoint_step": "lastCheckpointStep",
}


def parse_progress(text: str) -> dict:
    """The progress fields present in a Prometheus text exposition."""
    found: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = FIELDS.get(sample.name)
            if key is not None:
                if not math.isfinite(sample.value):  # a diverged loss is NaN; JSON (and the status) cannot hold it
                    continue
                found[key] = int(sample.value) if key in ("step", "lastCheckpointStep") else round(sample.value, 6)
    return found


def fetch_metrics(url: str, timeout: float = 3.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (pod IP from the API server)
        return response.read().decode()


class ProgressScraper:
    def __init__(self, interval: float, on_change: Callable[[str, str], None], fetch: Callable[[str], str] = fetch_metrics):
        self.interval = interval
        self.on_change = on_change
        self.fetch = fetch
        self._targets: dict[JobKey, str] = {}
        self._latest: dict[JobKey, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def watch(self, key: JobKey, url: str) -> None:
        with self._lock:
            self._targets[key] = url

    def forget(self, key: JobKey) -> None:
        with self._lock:
            self._targets.pop(key, None)
            self._latest.pop(key, None)

    def latest(self, key: JobKey) -> dict | None:
        with self._lock:
            return self._latest.get(key)

    def scrape_once(self) -> None:
        with self._lock:
            targets = dict(self._targets)
        for key, url in targets.items():
            try:
                progress = parse_progress(self.fetch(url))
            except (OSError, ValueError) as exc:  # not serving yet, restarting, or unreachable
                log.debug("no progress from %s: %s", url, exc)
                continue
            with self._lock:
                changed = progress and self._latest.get(key) != progress
                if changed:
                    self._latest[key] = progress
            if changed:
                self.on_change(*key)

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scrape_once()
            except Exception:  # the scraper must outlive any one bad reconcile
                log.exception("progress scrape failed")

    def start(self) -> None:
        threading.Thread(target=self.run, name="progress-scraper", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
