"""The operator reads training progress from the trainer's own metrics registry."""

from llm_operator.progress import parse_progress, scrape_target


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


def test_diverged_loss_is_dropped_not_sent():
    # NaN cannot be written into JSON: sending it made every later status patch fail.
    progress = parse_progress(trainer_exposition(loss=float("nan"), tokens=float("inf")))
    assert "loss" not in progress and "tokensPerSecond" not in progress and progress["step"] == 12


def worker0(restart, ip="10.1.2.3"):
    return {"metadata": {"name": "demo-worker-0", "uid": f"uid-{restart}", "labels": {"llmtraining.dev/node-rank": "0", "llmtraining.dev/restart": str(restart)}},
            "status": {"podIP": ip}}


def test_scrape_target_is_worker_zero_of_the_current_gang():
    target = scrape_target([worker0(0), worker0(1, ip="fd00::7")], gang=1, port=9090)
    assert target is not None and target.url == "http://[fd00::7]:9090/metrics" and target.pod_uid == "uid-1"
    assert scrape_target([worker0(0)], gang=1, port=9090) is None


def test_eval_loss_is_read_once_the_trainer_evaluated():
    from prometheus_client import generate_latest

    from llm_trainer.metrics import Metrics

    metrics = Metrics(port=None, info={"model": "tiny"})
    metrics.step.set(20)
    assert "evalLoss" not in parse_progress(generate_latest(metrics.registry).decode())  # absent, not 0, before the first evaluation
    metrics.eval_loss.set(2.25)
    assert parse_progress(generate_latest(metrics.registry).decode())["evalLoss"] == 2.25
