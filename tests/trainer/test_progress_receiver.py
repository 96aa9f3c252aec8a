"""The progress receiver against the real reporters: transformers' Trainer (its KubeflowCallback, registered by
the env alone) and llmtraining_report; what it serves parsed by prometheus_client's parser and the operator's."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_operator.progress import parse_progress
from llm_trainer.metrics import METRICS
from llm_trainer.progress_receiver import REPORT_HELPER_DIR, SERIES, start_progress_service


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    families = list(text_string_to_metric_families(text))  # the exposition format is valid, or this raises
    assert all(f.type == "gauge" and len(f.samples) == 1 for f in families)
    return {f.name: f.samples[0].value for f in families}


@pytest.fixture
def service(tmp_path):
    s = start_progress_service(free_port(), tmp_path / "token")
    yield s
    s.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_series_are_the_trainers_own():
    """Same names and help as the trainer's METRICS table (docs/trainer.md lists it), so dashboards and alerts match."""
    ours = {name: doc for name, kind, _, doc in METRICS if kind == "gauge"}
    assert {name: ours.get(name) for name, _ in SERIES} == dict(SERIES)


def test_hf_trainer_progress_is_served(service, monkeypatch, tmp_path):
    """A real tiny Trainer, told nothing but the env the launcher gives it, reports to the receiver."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.integrations import KubeflowCallback

    for key, value in service.program_env().items():
        monkeypatch.setenv(key, value)
    assert scrape(service.metrics_url) == {}  # absent until reported, not 0

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16))
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (16, 16))]
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=2,
                                          logging_steps=1, learning_rate=1e-3, save_strategy="no", use_cpu=True,
                                          report_to="none", disable_tqdm=True)
    assert args.report_to == ["kubeflow"]  # the env registered it

    seen: list[dict[str, float]] = []

    class ScrapeAtStepEnd(transformers.TrainerCallback):  # runs after KubeflowCallback (user callbacks come last)
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(scrape(service.metrics_url))

    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[ScrapeAtStepEnd()])
    kubeflow = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, KubeflowCallback))
    kubeflow._MIN_UPDATE_INTERVAL = 0.0  # HF posts at most every 5 s; a 4-step test would only see begin and end
    trainer.train()

    assert [s["llmtrain_step"] for s in seen] == [1, 2, 3, 4]
    assert all(s["llmtrain_total_steps"] == 4 and "llmtrain_finished" not in s for s in seen)
    assert "llmtrain_loss" not in seen[0] or seen[0]["llmtrain_loss"] > 0  # step 1's log comes after its step end
    final = scrape(service.metrics_url)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert final["llmtrain_step"] == 4 and final["llmtrain_total_steps"] == 4 and final["llmtrain_finished"] == 1
    assert final["llmtrain_loss"] == pytest.approx(logged[-1]["loss"])
    assert final["llmtrain_learning_rate"] == pytest.approx(logged[-1]["learning_rate"])
    assert final["llmtrain_estimated_remaining_seconds"] == 0
    assert final["llmtrain_last_step_timestamp_seconds"] > 0
    with urllib.request.urlopen(service.metrics_url, timeout=5) as response:  # what the operator reads from it
        assert parse_progress(response.read().decode()) == {"step": 4, "totalSteps": 4, "loss": pytest.approx(logged[-1]["loss"])}


def post(url: str, body: bytes, token: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token is not None else {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers, method="POST"), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


REPORT = json.dumps({"trainerStatus": {"progressPercentage": 10, "metrics": [{"name": "current_step", "value": "3"}]}}).encode()


def test_refuses_what_is_not_a_report_with_the_token(service):
    token = service.token_path.read_text()
    assert oct(service.token_path.stat().st_mode & 0o777) == "0o600"
    for body, sent, path, code, says in [
        (REPORT, None, "", 401, "bearer token"),
        (REPORT, "wrong", "", 401, "bearer token"),
        (REPORT, token, "/../other", 404, "POST /v1/progress"),
        (b"not json", token, "", 400, "not JSON"),
        (b'{"status": {}}', token, "", 400, "trainerStatus"),
        (b'{"trainerStatus": {"metrics": {"loss": 1}}}', token, "", 400, "trainerStatus.metrics"),
        (b'{"trainerStatus": {"progressPercentage": "half"}}', token, "", 400, "progressPercentage"),
    ]:
        url = service.receiver_url.replace("/v1/progress", "/v1/progress" + path) if path else service.receiver_url
        assert post(url, body, sent)[0] == code and says in post(url, body, sent)[1], (body, sent, path)
    bad_length = urllib.request.Request(service.receiver_url, data=REPORT, method="POST",
                                        headers={"Authorization": f"Bearer {token}", "Content-Length": "ten"})
    with pytest.raises(urllib.error.HTTPError) as refused_length:
        urllib.request.urlopen(bad_length, timeout=5)
    assert refused_length.value.code == 400
    assert scrape(service.metrics_url) == {}  # nothing refused was applied
    assert post(service.receiver_url, REPORT, token) == (200, "ok\n")
    assert scrape(service.metrics_url)["llmtrain_step"] == 3
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(service.receiver_url, timeout=5)
    assert refused.value.code == 405
    assert service.receiver_url.startswith("http://127.0.0.1:")  # loopback only


def test_report_helper_for_other_programs(service, tmp_path):
    """llmtraining_report, imported as a program imports it (PYTHONPATH from the service, stdlib only, in a fresh
    interpreter that cannot import our package), reports steps, values and the end; other ranks do not report."""
    program = tmp_path / "train.py"
    program.write_text(
        "import sys, llmtraining_report as r\n"
        "assert 'llm_trainer' not in sys.modules\n"
        "print(r.step(1, total_steps=10, loss=2.5, learning_rate=0.01), r.step(2, total_steps=10, loss=2.0, eval_loss=1.5))\n"
        "if sys.argv[1:] == ['end']: print(r.finished())\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | service.program_env()
    env.pop("RANK", None)
    isolated = [sys.executable, "-S", "-s", str(program)]  # -S: no site-packages, so our package is not importable
    out = subprocess.run(isolated, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.split() == ["True", "True"], out.stderr
    got = scrape(service.metrics_url)
    assert {k: got[k] for k in ("llmtrain_step", "llmtrain_total_steps", "llmtrain_loss", "llmtrain_learning_rate", "llmtrain_eval_loss")} == \
        {"llmtrain_step": 2, "llmtrain_total_steps": 10, "llmtrain_loss": 2.0, "llmtrain_learning_rate": 0.01, "llmtrain_eval_loss": 1.5}
    assert got["llmtrain_eval_perplexity"] == pytest.approx(4.4816890703) and "llmtrain_finished" not in got

    rank1 = subprocess.run([*isolated, "end"], env={**env, "RANK": "1"}, capture_output=True, text=True, timeout=30)
    assert rank1.stdout.split() == ["False", "False", "False"] and "llmtrain_finished" not in scrape(service.metrics_url)
    rank0 = subprocess.run([*isolated, "end"], env={**env, "RANK": "0"}, capture_output=True, text=True, timeout=30)
    assert rank0.stdout.split() == ["True", "True", "True"] and scrape(service.metrics_url)["llmtrain_finished"] == 1

    without_launcher = subprocess.run(isolated, env={k: v for k, v in env.items() if not k.startswith("KUBEFLOW_")},
                                      capture_output=True, text=True, timeout=30)
    assert without_launcher.stdout.split() == ["False", "False"] and without_launcher.stderr == ""


def test_report_helper_never_raises_when_the_receiver_is_gone(tmp_path):
    service = start_progress_service(0, tmp_path / "token")
    env = service.program_env()
    service.close()
    spec = importlib.util.spec_from_file_location("llmtraining_report", REPORT_HELPER_DIR / "llmtraining_report.py")
    assert spec is not None and spec.loader is not None
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    try:
        assert helper.step(1, total_steps=2, loss=1.0, timeout=1) is False
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert service.metrics_url is None and Path(env["KUBEFLOW_TRAINER_SERVER_TOKEN"]).exists()


def test_promtool_accepts_the_exposition():
    """Every series set (a diverged loss NaN included), checked by Prometheus' own linter as the trainer's are."""
    import shutil

    from llm_trainer.progress_receiver import ProgressState

    assert shutil.which("promtool"), "promtool comes with Debian's prometheus: run ./dev setup (hack/test-deps-apt.txt)"
    state = ProgressState()
    state.apply({name: float("nan") if name == "llmtrain_loss" else 1.0 for name, _ in SERIES})
    assert {f.name for f in text_string_to_metric_families(state.exposition())} == {name for name, _ in SERIES}
    result = subprocess.run(["promtool", "check", "metrics"], input=state.exposition(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
