"""The operator reads training progress from the trainer's own metrics registry."""

import pytest

from llm_operator.progress import ProgressScraper, parse_progress


def trainer_exposition(step=12, loss=3.5, tokens=4096.0, mfu=0.25, checkpoint=10):
    """What the trainer's /metrics serves, produced by the trainer's own Metrics class."""
    from prometheus_client import generate_latest

    from llm_trainer.metrics import Metrics

    metrics = Metrics(port=None, info={"model": "tiny"})
    metrics.step.set(step)
    metrics.loss.set(loss)
    metrics.tokens_per_second.set(tokens)
    metrics.mfu.set(mfu)
    metrics.last_checkpoint_step.set(checkpoint)
    return generate_latest(metrics.registry).decode()


def test_parse_the_trainers_metrics():
    assert parse_progress(trainer_exposition()) == {"step": 12, "loss": 3.5, "tokensPerSecond": 4096.0, "mfu": 0.25, "lastCheckpointStep": 10}


def test_scraper_reports_changes_only():
    pages = {"http://10.0.0.1:9090/metrics": trainer_exposition(step=1)}
    changed = []
    scraper = ProgressScraper(interval=1, on_change=lambda ns, name: changed.append((ns, name)), fetch=pages.__getitem__)
    scraper.watch(("ns", "job"), "http://10.0.0.1:9090/metrics")
    scraper.scrape_once()
    scraper.scrape_once()
    assert changed == [("ns", "job")]
    assert scraper.latest(("ns", "job"))["step"] == 1
    pages["http://10.0.0.1:9090/metrics"] = trainer_exposition(step=2)
    scraper.scrape_once()
    assert changed == [("ns", "job")] * 2 and scraper.latest(("ns", "job"))["step"] == 2


def test_unreachable_endpoint_is_not_an_error():
    def refuse(url):
        raise ConnectionRefusedError(url)

    scraper = ProgressScraper(interval=1, on_change=pytest.fail, fetch=refuse)
    scraper.watch(("ns", "job"), "http://10.0.0.1:9090/metrics")
    scraper.scrape_once()
    assert scraper.latest(("ns", "job")) is None
    scraper.forget(("ns", "job"))


def test_diverged_loss_is_dropped_not_sent():
    # NaN cannot be written into JSON: sending it made every later status patch fail.
    progress = parse_progress(trainer_exposition(loss=float("nan"), tokens=float("inf")))
    assert "loss" not in progress and "tokensPerSecond" not in progress and progress["step"] == 12


def test_forgetting_a_job_drops_its_progress():
    scraper = ProgressScraper(interval=1, on_change=lambda ns, name: None, fetch=lambda url: trainer_exposition())
    scraper.watch(("ns", "job"), "http://10.0.0.1:9090/metrics")
    scraper.scrape_once()
    scraper.forget(("ns", "job"))
    assert scraper.latest(("ns", "job")) is None  # a re-created namesake starts from nothing
