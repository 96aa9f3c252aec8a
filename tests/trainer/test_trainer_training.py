"""DeepSpeed on CPU ranks (gloo): ZeRO stages, bit-exact resume, crash and SIGTERM safety, metrics, two nodes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_operator.api import load_job_file
from llm_operator.api.deepspeed_config import build_deepspeed_config
from llm_trainer import markers
from llm_trainer.checkpoint import CRASH_BEFORE_COMMIT_ENV, CRASH_EXIT_CODE

from trainer_testlib import REPO, free_port, rank_env, run_ranks, start_ranks, write_job

pytestmark = pytest.mark.trainer


def logged(run, key: str) -> dict[int, float]:
    """A field of rank 0's JSON log lines, by step."""
    lines = (json.loads(line) for line in run.logs[0].read_text().splitlines() if line.startswith('{"step"'))
    return {r["step"]: r[key] for r in lines}


def assert_learns(run) -> None:
    losses = run.losses
    assert run.codes == [0] * len(run.codes), run.log_tail()
    assert sorted(losses) == list(range(1, 31))
    assert all(math.isfinite(v) for v in losses.values())
    assert losses[1] > 5.0  # ≈ ln(256) at initialization
    assert max(losses[i] for i in range(26, 31)) < losses[1] - 1.0, losses
    assert markers.read(run.out / "markers", markers.COMPLETE) == {"step": 30, "tag": "global_step30"}
    assert (run.out / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_trains_and_matches_stage_1(stage, tmp_path, reference_run):
    """Every ZeRO stage learns; all compute the same thing as the ZeRO-1 reference up to float rounding."""
    if stage == 1:
        run = reference_run
    else:
        run = run_ranks(write_job(tmp_path, {"spec": {"training": {"zeroStage": stage}}}), tmp_path / "out")
    assert_learns(run)
    for step, loss in reference_run.losses.items():
        assert run.losses[step] == pytest.approx(loss, rel=1e-3, abs=1e-3), step
    # the gradient norm is reported at every stage (ZeRO 0 logged null before), the same before clipping
    norms, reference_norms = logged(run, "grad_norm"), logged(reference_run, "grad_norm")
    assert all(isinstance(norms[step], float) and norms[step] > 0 for step in reference_norms), norms
    for step, norm in reference_norms.items():
        assert norms[step] == pytest.approx(norm, rel=1e-2), step


def test_stop_and_resume_is_bit_exact(tmp_path, reference_run):
    job = write_job(tmp_path)
    first = run_ranks(job, tmp_path / "out", args=("--stop-at-step", "13"))
    assert first.codes == [0, 0], first.log_tail()
    assert markers.read(tmp_path / "out" / "markers", markers.PREEMPTED) == {
        "step": 13, "tag": "global_step13", "reason": "stop-at-step"}
    assert (tmp_path / "out" / "checkpoints" / "latest").read_text() == "global_step13"
    assert sorted(first.losses) == list(range(1, 14))
    # the checkpoint carries the last logged values, which a resumed run shows until it measures its own
    import torch

    state = torch.load(tmp_path / "out" / "checkpoints" / "global_step13" / "mp_rank_00_model_states.pt", weights_only=False)
    assert state["llmtrain"]["last_logged"]["loss"] == first.losses[13]

    second = run_ranks(job, tmp_path / "out")
    assert second.codes == [0, 0], second.log_tail()
    assert second.summary["resumed_from"] == "global_step13"
    from llm_trainer.shm import allreduce_buffers

    assert allreduce_buffers("127.0.0.1", second.port) == []  # each rank removed its shared-memory buffer
    assert sorted(second.losses) == list(range(14, 31))
    expected = reference_run.losses
    for step, loss in {**first.losses, **second.losses}.items():
        assert loss == expected[step], f"step {step}: {loss!r} != uninterrupted {expected[step]!r}"
    assert second.summary["initial_loss"] == expected[1]  # carried through the checkpoint
    # the LR schedule continues too: warmup 3 steps to 0.01, cosine to 0.001 at step 30
    lrs = {**logged(first, "lr"), **logged(second, "lr")}
    assert lrs[1] == pytest.approx(0.01 / 3) and lrs[3] == pytest.approx(0.01) and lrs[30] == pytest.approx(0.001)
    assert lrs == pytest.approx(logged(reference_run, "lr"), rel=1e-12)


def test_final_state_reaches_the_job_status_equal_to_the_summary(reference_run):
    """trainer (final.json) → llm-train launch (termination message) → operator (status): the end is seen."""
    from datetime import datetime, timezone

    from llm_operator.api import parse_job
    from llm_operator.lifecycle import decide, status_figure
    from llm_trainer.launch import termination_message

    summary = reference_run.summary
    message = termination_message(0, "training complete", str(reference_run.out / "markers"))
    job = parse_job({"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": "t", "uid": "u"},
                     "spec": {"image": "x", "nodes": 1, "slotsPerNode": 2, "accelerator": "cpu", "model": {"preset": "tiny"},
                              "training": {"steps": 30, "microBatchSize": 2, "globalBatchSize": 8, "precision": "fp32"}}})
    worker0 = {"metadata": {"name": "t-worker-0", "uid": "p0", "labels": {"llmtraining.dev/node-rank": "0", "llmtraining.dev/restart": "0"}},
               "status": {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                   "exitCode": 0, "reason": "Completed", "message": message}}}]}}
    running = {"phase": "Running", "restarts": 0, "progress": {"step": 20, "loss": 9.0, "totalSteps": 30}}  # a stale last scrape
    now = datetime.now(timezone.utc)
    status = decide(job, 1, [worker0], running, now, observed_since=now).status
    assert status["phase"] == "Succeeded"
    assert status["progress"]["step"] == summary["steps"] == 30 and status["progress"]["stepOfTotal"] == "30/30"
    assert status["progress"]["loss"] == status_figure(summary["final_loss"])  # 4 significant digits, as kubectl shows it
    assert status["progress"]["tokensPerSecond"] == status_figure(summary["tokens_per_second"])
    assert status["lastCheckpoint"]["tag"] == summary["tag"] == "global_step30"


def test_gang_killed_mid_training_resumes_like_an_uninterrupted_run(tmp_path, reference_run):
    """What a gang restart does: every rank SIGKILLed (a lost node, a grace period run out), then a new gang in
    fresh processes on a new rendezvous port resumes from the newest complete checkpoint."""
    job = write_job(tmp_path)
    out = tmp_path / "out"
    procs, logs = start_ranks(job, out)
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not latest.exists() and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert latest.exists(), "\n".join(log.read_text()[-2000:] for log in logs)
    killed_at = latest.read_text()
    assert markers.read(out / "markers", markers.COMPLETE) is None  # killed mid-training, not after it

    resumed = run_ranks(job, out)
    assert resumed.codes == [0, 0], resumed.log_tail()
    assert resumed.summary["resumed_from"] == killed_at
    first = int(killed_at.removeprefix("global_step")) + 1
    assert sorted(resumed.losses) == list(range(first, 31))
    for step, loss in resumed.losses.items():
        assert loss == reference_run.losses[step], f"step {step}: {loss!r} != uninterrupted {reference_run.losses[step]!r}"


def test_crash_during_save_never_becomes_latest(tmp_path, reference_run):
    job = write_job(tmp_path)
    ckpts = tmp_path / "out" / "checkpoints"
    crashed = run_ranks(job, tmp_path / "out", env={CRASH_BEFORE_COMMIT_ENV: "20"})
    assert crashed.codes == [CRASH_EXIT_CODE] * 2, crashed.log_tail()
    assert (ckpts / "latest").read_text() == "global_step10"
    assert (ckpts / "global_step20").is_dir() and not (ckpts / "global_step20" / ".complete").exists()
    assert markers.read(tmp_path / "out" / "markers", markers.COMPLETE) is None

    resumed = run_ranks(job, tmp_path / "out")
    assert resumed.codes == [0, 0], resumed.log_tail()
    assert resumed.summary["resumed_from"] == "global_step10"
    assert resumed.losses[11] == reference_run.losses[11]
    assert resumed.losses[30] == reference_run.losses[30]
    assert (ckpts / "latest").read_text() == "global_step30"
    # keep: 2 -> the two newest complete checkpoints remain
    assert sorted(p.name for p in ckpts.glob("global_step*")) == ["global_step20", "global_step30"]
    assert all((ckpts / t / ".complete").exists() for t in ("global_step20", "global_step30"))


def scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families: dict, family: str, sample: str | None = None) -> float:
    return next(s.value for s in families[family] if s.name == (sample or family))


def wait_for_step(progress: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "training ended early"
        try:
            current = json.loads(progress.read_text())["step"]
            if current >= step:
                return current
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not reached")


@pytest.fixture(scope="module")
def interrupted_cli_run(tmp_path_factory):
    """`llm-train run` of a long job: /metrics scraped twice while it trains, then SIGTERM."""
    d = tmp_path_factory.mktemp("sigterm")
    job = write_job(d, {"spec": {"training": {"steps": 5000}, "checkpoint": {"intervalSteps": 0}}})
    port = free_port()
    out = d / "out"
    env = rank_env(LLMTRAIN_METRICS_PORT=str(port))
    with open(d / "cli.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llm_trainer.cli", "run", str(job), "--output-dir", str(out),
                                 "--no-progress"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            first_step = wait_for_step(out / "progress.json", 3, proc)
            first = scrape(port)
            wait_for_step(out / "progress.json", first_step + 3, proc)
            second = scrape(port)
            wait_for_step(out / "progress.json", 12, proc)  # far enough that a trained model is recognizable
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return {"dir": d, "job": job, "out": out, "code": code, "scrapes": (first, second),
            "log": (d / "cli.log").read_text()}


def test_metrics_endpoint_moves_between_scrapes(interrupted_cli_run):
    first, second = interrupted_cli_run["scrapes"]
    assert value(second, "llmtrain_step") > value(first, "llmtrain_step") >= 1
    assert value(second, "llmtrain_step_time_seconds", "llmtrain_step_time_seconds_count") > \
        value(first, "llmtrain_step_time_seconds", "llmtrain_step_time_seconds_count")
    for scrape_ in (first, second):
        assert 0 < value(scrape_, "llmtrain_loss") < 10
        assert value(scrape_, "llmtrain_tokens_per_second") > 0
        assert value(scrape_, "llmtrain_learning_rate") > 0
        assert value(scrape_, "llmtrain_grad_norm") > 0
        assert value(scrape_, "llmtrain_total_steps") == 5000
        assert "llmtrain_gpu_memory_bytes" in scrape_ and "llmtrain_last_step_timestamp_seconds" in scrape_
        # absent, not 0: CPU has no known peak (no MFU), and no checkpoint was written yet
        assert not {"llmtrain_mfu", "llmtrain_last_checkpoint_step", "llmtrain_resumed_step"} & scrape_.keys()
    assert value(second, "llmtrain_steps", "llmtrain_steps_total") > value(first, "llmtrain_steps", "llmtrain_steps_total") >= 1
    info = second["llmtrain_info"][0].labels
    assert info["world_size"] == "2" and info["deepspeed_version"] == "0.19.8" and info["model"] == "tiny"


def test_sigterm_reaches_the_ranks_not_deepspeeds_launcher(interrupted_cli_run):
    """`llm-train run` forwards SIGTERM as the in-pod launcher does: to the ranks only. Signalled itself, DeepSpeed's
    launcher SIGTERMs the ranks again and SIGKILLs every rank still saving 30 s later."""
    log = (interrupted_cli_run["out"] / "train.log").read_text()
    assert "forwarded SIGTERM to the DeepSpeed ranks" in log, log[-3000:]
    assert "Killing subprocess" not in log and "Main process received SIGTERM" not in log, log[-3000:]
    assert interrupted_cli_run["code"] == 143


def test_sigterm_saves_a_loadable_checkpoint(interrupted_cli_run):
    r = interrupted_cli_run
    assert r["code"] == 143, r["log"][-3000:]
    preempted = markers.read(r["out"] / "markers", markers.PREEMPTED)
    assert preempted["reason"] == "SIGTERM" and preempted["step"] >= 12, preempted
    step, tag = preempted["step"], preempted["tag"]
    ckpts = r["out"] / "checkpoints"
    assert (ckpts / "latest").read_text() == tag and (ckpts / tag / ".complete").exists()
    progress = json.loads((r["out"] / "progress.json").read_text())
    assert progress["lastCheckpoint"]["tag"] == tag and progress["step"] == step

    resumed = run_ranks(r["job"], r["out"], args=("--stop-at-step", str(step + 1)))
    assert resumed.codes == [0, 0], resumed.log_tail()
    assert resumed.summary["resumed_from"] == tag
    # the loaded weights continue where training stopped (a fresh model would be at ≈ ln 256 = 5.55)
    assert list(resumed.losses) == [step + 1]
    assert resumed.losses[step + 1] < 5.2 and abs(resumed.losses[step + 1] - progress["loss"]) < 0.4


def test_two_no_ssh_nodes_train_together(tmp_path, reference_run):
    """Two DeepSpeed runners with --no_ssh, a two-host hostfile and the rendered ds_config.json, as the pods run them."""
    job = write_job(tmp_path, {"spec": {"nodes": 2, "slotsPerNode": 1}})
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    ds_config = tmp_path / "ds_config.json"  # rendered like the operator's ConfigMap
    ds_config.write_text(json.dumps(build_deepspeed_config(load_job_file(str(job)).spec)))
    out, port = tmp_path / "out", free_port()
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh",
               f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
               "--module", "llm_trainer.worker", "--job", str(job), "--deepspeed-config", str(ds_config),
               "--output-dir", str(out)]
        env = rank_env(LLMTRAIN_MARKER_DIR=str(out / f"markers-{node}"))
        log = open(tmp_path / f"node{node}.log", "w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
    codes = [p.wait(timeout=240) for p in procs]
    logs = "\n".join((tmp_path / f"node{n}.log").read_text()[-3000:] for n in range(2))
    assert codes == [0, 0], logs
    for node in range(2):
        assert markers.read(out / f"markers-{node}", markers.COMPLETE) == {"step": 30, "tag": "global_step30"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    losses = {r["step"]: r["loss"] for r in summary["losses"]}
    # the same two global ranks as 1 node × 2 slots: the same numbers
    assert losses == pytest.approx(reference_run.losses, rel=1e-6)


def test_llm_train_run_tiny_cpu_example(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, LLMTRAIN_METRICS_PORT="0")
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-m", "llm_trainer.cli", "run", str(REPO / "examples" / "tiny-cpu.yaml"),
                           "--output-dir", str(out), "--master-port", str(free_port())],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 200
    assert summary["initial_loss"] > 5.0 and summary["final_loss"] < summary["initial_loss"] - 3.0, summary
    assert summary["tokens_per_second"] > 0
    assert [e["step"] for e in summary["eval_losses"]] == [50, 100, 150, 200]  # the example's evalIntervalSteps
    assert summary["eval_loss"] < summary["eval_losses"][0]["loss"]
    assert Path(summary["checkpoint"]).name == "global_step200" and (Path(summary["checkpoint"]) / ".complete").exists()

    import torch
    from llm_trainer.data import SyntheticSource
    from llm_trainer.hf import config_from_hf, load_hf_weights, read_hf_config
    from llm_trainer.model import build_model

    cfg = config_from_hf(read_hf_config(out / "model"))
    model = build_model(cfg, seed=0)
    fresh_loss = None
    batch = torch.from_numpy(SyntheticSource(cfg.vocab_size, cfg.seq_len, seed=1234).sample(10**6)).long()[None]
    with torch.no_grad():
        fresh_loss = model(batch[:, :-1], batch[:, 1:]).item()
        load_hf_weights(model, out / "model")
        trained_loss = model(batch[:, :-1], batch[:, 1:]).item()
    assert trained_loss < fresh_loss - 3.0, (fresh_loss, trained_loss)


def test_jsonl_data_and_a_hugging_face_start(tmp_path):
    """One rank: a Llama checkpoint directory as the start, jsonl text tokenized on the fly, exported back."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from llm_operator.api import load_job_file
    from llm_trainer.data import build_loader, build_source
    from llm_trainer.hf import config_from_hf, load_hf_weights, read_hf_config, save_hf_model
    from llm_trainer.model import ModelConfig, build_model

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = "the quick brown fox jumps over lazy dog and cat sat on mat".split()
    tok.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["[UNK]", "</s>"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    with open(tmp_path / "corpus.jsonl", "w") as f:
        for i in range(200):
            f.write(json.dumps({"text": " ".join(words[(i + j) % len(words)] for j in range(12))}) + "\n")
    start = ModelConfig("llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, ffn_hidden=96, seq_len=16,
                        vocab_size=32, tie_embeddings=False)
    save_hf_model(start, build_model(start, seed=11).state_dict(), tmp_path / "start", max_position_embeddings=64)

    job = write_job(tmp_path, {"spec": {
        "slotsPerNode": 1, "model": {"preset": None, "huggingFacePath": str(tmp_path / "start"), "seqLen": 16},
        "data": {"format": "jsonl", "paths": [str(tmp_path / "*.jsonl")], "tokenizer": str(tmp_path / "tokenizer.json")},
        "training": {"steps": 4, "globalBatchSize": 4, "microBatchSize": 2}}})
    run = run_ranks(job, tmp_path / "out", world=1)
    assert run.codes == [0], run.log_tail()
    exported = tmp_path / "out" / "model"
    config = read_hf_config(exported)
    assert config["model_type"] == "llama"
    assert (exported / "tokenizer.json").read_text() == (tmp_path / "tokenizer.json").read_text()
    # fine-tuned at seqLen 16, the model keeps its source's context; </s> separated the documents it was trained on
    assert config["max_position_embeddings"] == 64
    eos = tok.token_to_id("</s>")
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (eos, eos, None)
    generation = json.loads((exported / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (eos, eos, None)

    # step 1's loss is the starting checkpoint's loss on the first two micro-batches of the tokenized corpus
    spec = load_job_file(str(job)).spec
    model = build_model(config_from_hf(read_hf_config(tmp_path / "start"), seq_len=16), seed=0)
    load_hf_weights(model, tmp_path / "start")
    source = build_source(spec.data, 32, 16, spec.training.seed, tmp_path / "out" / "data-cache", tokenize_here=False)
    loader = build_loader(source, seed=spec.training.seed, rank=0, world_size=1, micro_batch=2,
                          device=torch.device("cpu"), vocab_size=32)
    with torch.no_grad():
        expected = sum(model(*next(loader)).item() for _ in range(2)) / 2
    assert run.losses[1] == pytest.approx(expected, rel=1e-5)
