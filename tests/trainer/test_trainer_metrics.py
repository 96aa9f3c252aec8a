"""The trainer's /metrics: absent-not-zero gauges, counters, the final-scrape grace, the documented table."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
import urllib.request

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llm_trainer.metrics import METRICS, Metrics

from trainer_testlib import REPO, free_port


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def sample_names(metrics: Metrics) -> set[str]:
    return {s.name for f in text_string_to_metric_families(exposition(metrics)) for s in f.samples}


def test_gauges_are_absent_until_measured():
    metrics = Metrics(None, {"job_name": "t", "model": "tiny"})
    names = sample_names(metrics)
    for absent in ("llmtrain_loss", "llmtrain_mfu", "llmtrain_tokens_per_second", "llmtrain_step", "llmtrain_finished"):
        assert absent not in names  # a 0 would draw a dip on every resume and claim an MFU of 0
    assert {"llmtrain_steps_total", "llmtrain_tokens_total", "llmtrain_info", "process_start_time_seconds"} <= names
    metrics.loss.set(2.5)
    metrics.step_done(7, tokens=64)
    text = exposition(metrics)
    assert "llmtrain_loss 2.5" in text and "llmtrain_step 7.0" in text and "llmtrain_trained_tokens 448.0" in text
    assert 'llmtrain_info{job_name="t",model="tiny"} 1.0' in text
    metrics.mfu.set(None)
    assert "llmtrain_mfu" not in sample_names(metrics)


def test_counters_count_steps_and_tokens():
    metrics = Metrics(None, {})
    for step in (1, 2, 3):
        metrics.step_done(step, tokens=100)
    values = {s.name: s.value for f in text_string_to_metric_families(exposition(metrics)) for s in f.samples}
    assert values["llmtrain_steps_total"] == 3 and values["llmtrain_tokens_total"] == 300
    assert abs(values["llmtrain_last_step_timestamp_seconds"] - time.time()) < 60


def test_endpoint_lingers_for_a_last_scrape_and_sigterm_cuts_it_short():
    port = free_port()
    metrics = Metrics(port, {})
    metrics.finished.set(1)
    stop = threading.Event()
    closing = threading.Thread(target=metrics.close, kwargs={"linger_seconds": 30, "stop": stop.is_set})
    started = time.monotonic()
    closing.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # still served while lingering
        assert "llmtrain_finished 1.0" in response.read().decode()
    stop.set()
    closing.join(10)
    assert not closing.is_alive() and time.monotonic() - started < 10


def test_port_clash_is_a_warning_not_a_crash(capfd):
    port = free_port()
    first = Metrics(port, {})
    second = Metrics(port, {})
    assert second.server is None and "WARNING: metrics endpoint on port" in capfd.readouterr().err
    first.close()


def test_promtool_accepts_the_exposition():
    assert shutil.which("promtool"), "promtool comes with Debian's prometheus: run ./dev setup (hack/test-deps-apt.txt)"
    metrics = Metrics(None, {"job_name": "t"})
    metrics.loss.set(1.5)
    metrics.step_done(3, tokens=64)
    metrics.step_time.observe(0.2)
    result = subprocess.run(["promtool", "check", "metrics"], input=exposition(metrics), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_docs_list_every_metric_with_its_type_and_labels():
    doc = (REPO / "docs" / "trainer.md").read_text()
    table = re.findall(r"^\| `(llmtrain_[a-z_]+)` \| (\w+) \| ([^|]*) \|", doc, flags=re.M)
    documented = {(name, kind, tuple(re.findall(r"`([a-z_]+)`", labels))) for name, kind, labels in table}
    assert documented == {(name, kind, labels) for name, kind, labels, _ in METRICS}
