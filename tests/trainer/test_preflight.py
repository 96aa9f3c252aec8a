"""Fail fast: every bad input fails `llm-train validate`, `llm-train run`, the worker and the in-pod launcher before a
model is built, with an error that names the manifest field and the file (trainer/preflight.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from llm_trainer import cli, worker
from llm_trainer.hf import save_hf_model
from llm_trainer.launch.common import EXIT_INPUT
from llm_trainer.model import ModelConfig, build_model
from llm_trainer.preflight import PreflightError, check

from trainer_testlib import REPO, rank_env, write_job
from llm_operator.api import load_job_file

pytestmark = pytest.mark.trainer

SMALL_LLAMA = ModelConfig("llama", n_layers=1, d_model=16, n_heads=2, n_kv_heads=2, ffn_hidden=32, seq_len=16, vocab_size=32,
                          tie_embeddings=False)


def tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the cat sat on the mat a dog ran far away"], trainers.WordLevelTrainer(special_tokens=["[UNK]", "</s>"]))
    tok.save(str(path))
    return path


def tokens(path: Path, n: int, dtype: str = "uint16") -> Path:
    (np.arange(n) % 200).astype(dtype).tofile(path)
    return path


def hf_dir(path: Path) -> Path:
    save_hf_model(SMALL_LLAMA, build_model(SMALL_LLAMA, seed=0).state_dict(), path)
    return path


# Each case: a function of the test's directory that makes the bad input and returns (spec changes, field, file).
Case = Callable[[Path], tuple[dict, str, str]]


def missing_tokenizer(d: Path):
    (d / "a.txt").write_text("the cat sat on the mat\n")
    return {"data": {"format": "text", "paths": [str(d / "a.txt")], "tokenizer": str(d / "nope.json")}}, "data.tokenizer", str(d / "nope.json")


def corrupt_tokenizer(d: Path):
    (d / "a.txt").write_text("the cat sat on the mat\n")
    (d / "tok.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"')
    return {"data": {"format": "text", "paths": [str(d / "a.txt")], "tokenizer": str(d / "tok.json")}}, "data.tokenizer", str(d / "tok.json")


def tokenizer_bigger_than_vocab(d: Path):
    (d / "a.jsonl").write_text('{"text": "the cat"}\n')
    tok = tokenizer(d / "tok.json")
    return ({"model": {"vocabSize": 8}, "data": {"format": "jsonl", "paths": [str(d / "a.jsonl")], "tokenizer": str(tok)}},
            "model.vocabSize", str(tok))


def jsonl_without_text_field(d: Path):
    (d / "a.jsonl").write_text('{"body": "the cat"}\n')
    tok = tokenizer(d / "tok.json")
    return {"data": {"format": "jsonl", "paths": [str(d / "a.jsonl")], "tokenizer": str(tok)}}, "data.paths", str(d / "a.jsonl")


def odd_token_file(d: Path):
    tokens(d / "good.bin", 1000)
    (d / "bad.bin").write_bytes(b"\x01\x00" * 100 + b"\x07")  # 201 bytes: not whole uint16 tokens
    return {"data": {"format": "tokens", "paths": [str(d / "*.bin")]}}, "data.paths", str(d / "bad.bin")


def uint32_file_read_as_uint16_is_caught_by_size(d: Path):
    (d / "c.bin").write_bytes(np.arange(1001, dtype=np.uint32).tobytes()[:-2])  # a truncated uint32 file
    return {"data": {"format": "tokens", "tokenDtype": "uint32", "paths": [str(d / "c.bin")]}}, "data.paths", str(d / "c.bin")


def no_data_file(d: Path):
    return {"data": {"format": "tokens", "paths": [str(d / "corpus-*.bin")]}}, "data.paths", str(d / "corpus-*.bin")


def seq_len_longer_than_data(d: Path):
    tokens(d / "short.bin", 20)  # seqLen 32 needs 33 tokens
    return {"data": {"format": "tokens", "paths": [str(d / "short.bin")]}}, "model.seqLen", str(d / "short.bin")


def validation_file_is_a_training_file(d: Path):
    tokens(d / "a.bin", 1000)
    return ({"data": {"format": "tokens", "paths": [str(d / "a.bin")], "validation": {"paths": [str(d / "a.bin")]}}},
            "data.validation.paths", str(d / "a.bin"))


def fraction_holds_nothing_out(d: Path):
    tokens(d / "a.bin", 40)  # one window of 33 tokens: never held out
    return ({"data": {"format": "tokens", "paths": [str(d / "a.bin")], "validation": {"fraction": 0.1}}},
            "data.validation.fraction", str(d / "a.bin"))


def missing_hugging_face_dir(d: Path):
    return {"model": {"preset": None, "huggingFacePath": str(d / "absent")}}, "model.huggingFacePath", str(d / "absent")


def hugging_face_dir_without_config(d: Path):
    path = hf_dir(d / "hf")
    (path / "config.json").unlink()
    return {"model": {"preset": None, "huggingFacePath": str(path)}}, "model.huggingFacePath", str(path / "config.json")


def hugging_face_config_not_json(d: Path):
    path = hf_dir(d / "hf")
    (path / "config.json").write_text("{model_type: llama")
    return {"model": {"preset": None, "huggingFacePath": str(path)}}, "model.huggingFacePath", str(path / "config.json")


def hugging_face_dir_without_weights(d: Path):
    path = hf_dir(d / "hf")
    (path / "model.safetensors").unlink()
    return {"model": {"preset": None, "huggingFacePath": str(path)}}, "model.huggingFacePath", str(path)


def hugging_face_weights_corrupt(d: Path):
    path = hf_dir(d / "hf")
    (path / "model.safetensors").write_bytes(b"\xff" * 64)
    return {"model": {"preset": None, "huggingFacePath": str(path)}}, "model.huggingFacePath", str(path / "model.safetensors")


def seq_len_beyond_the_models_positions(d: Path):
    path = d / "hf"
    gpt = ModelConfig("gpt", n_layers=1, d_model=16, n_heads=2, n_kv_heads=2, ffn_hidden=64, seq_len=16, vocab_size=32, tie_embeddings=True)
    save_hf_model(gpt, build_model(gpt, seed=0).state_dict(), path)  # n_positions 16
    return {"model": {"preset": None, "huggingFacePath": str(path), "seqLen": 32}}, "model.seqLen", str(path / "config.json")


CASES: list[Case] = [missing_tokenizer, corrupt_tokenizer, tokenizer_bigger_than_vocab, jsonl_without_text_field, odd_token_file,
                     uint32_file_read_as_uint16_is_caught_by_size, no_data_file, seq_len_longer_than_data,
                     validation_file_is_a_training_file, fraction_holds_nothing_out, missing_hugging_face_dir,
                     hugging_face_dir_without_config, hugging_face_config_not_json, hugging_face_dir_without_weights,
                     hugging_face_weights_corrupt, seq_len_beyond_the_models_positions]


def lora_target_matches_nothing(d: Path):
    path = hf_dir(d / "hf")
    return ({"model": {"preset": None, "huggingFacePath": str(path)}, "training": {"globalBatchSize": 2, "lora": {"targetModules": ["qkv"]}}},
            "training.lora.targetModules", str(path / "config.json"))


CASES.append(lora_target_matches_nothing)  # issue 21 (LoRA)


@pytest.fixture(params=CASES, ids=[c.__name__ for c in CASES])
def bad_job(request, tmp_path):
    changes, field, file = request.param(tmp_path)
    job = write_job(tmp_path, {"spec": {"slotsPerNode": 1, "training": {"globalBatchSize": 2}, **changes}})
    return job, field, file


def assert_names(message: str, field: str, file: str) -> None:
    lines = [line for line in message.splitlines() if field in line]
    assert lines, f"no line names {field}:\n{message}"
    assert any(file in line for line in lines), f"the line naming {field} does not name {file}:\n{message}"


def test_check_names_field_and_file(bad_job):
    job, field, file = bad_job
    with pytest.raises(PreflightError) as error:
        check(load_job_file(str(job)).spec)
    assert_names(str(error.value), field, file)


def test_validate_fails_naming_field_and_file(bad_job, capsys):
    job, field, file = bad_job
    assert cli.main(["validate", str(job)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no plan printed
    assert_names(captured.err, field, file)


def test_run_fails_before_deepspeed_starts(bad_job, tmp_path, capsys, monkeypatch):
    job, field, file = bad_job
    started = []
    monkeypatch.setattr(cli, "_launch", lambda *a, **k: started.append(a) or 0)
    assert cli.main(["run", str(job), "--output-dir", str(tmp_path / "out"), "--log-format", "json"]) == 1
    captured = capsys.readouterr()
    assert_names(captured.out + captured.err, field, file)
    assert not started and not (tmp_path / "out" / "train.log").exists()


def test_worker_fails_before_the_model_is_built(bad_job, tmp_path, monkeypatch):
    job, field, file = bad_job
    built = []
    monkeypatch.setattr(worker, "init_distributed", lambda *a: built.append("distributed"))
    monkeypatch.setattr(worker, "build_model", lambda *a, **k: built.append("model"))
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(PreflightError) as error:
        worker.main(["--job", str(job), "--output-dir", str(tmp_path / "out")])
    assert_names(str(error.value), field, file)
    assert built == []
    marker = json.loads(next((tmp_path / "out" / "markers").glob("error-*.json")).read_text())
    assert field in marker["error"] and file in marker["error"]  # what the launcher's termination message carries


def test_good_inputs_pass(tmp_path):
    tokens(tmp_path / "a.bin", 1000)
    tokens(tmp_path / "v.bin", 200)
    path = hf_dir(tmp_path / "hf")
    job = write_job(tmp_path, {"spec": {"model": {"preset": None, "huggingFacePath": str(path), "seqLen": None},
                                        "data": {"format": "tokens", "paths": [str(tmp_path / "a.bin")],
                                                 "validation": {"paths": [str(tmp_path / "v.bin")]}}}})
    report = check(load_job_file(str(job)).spec)
    assert (report.vocab_size, report.seq_len) == (32, 16)


def test_validate_lists_paths_on_pod_volumes_instead_of_failing(tmp_path, capsys):
    job = write_job(tmp_path, {"spec": {"data": {"format": "tokens", "paths": ["corpus/*.bin"], "mountPath": str(tmp_path / "not-here"),
                                                 "volume": {"persistentVolumeClaim": {"claimName": "corpus"}}}}})
    assert cli.main(["validate", str(job)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["notCheckedHere"] == [f"data.paths: {tmp_path / 'not-here' / 'corpus' / '*.bin'} (on a volume mounted at "
                                      f"{tmp_path / 'not-here'} in the pods)"]
    with pytest.raises(PreflightError, match="data.paths"):  # in the pod (and in `llm-train run`) the files must be there
        check(load_job_file(str(job)).spec)


def test_launch_fails_in_seconds_with_a_termination_message(tmp_path):
    """The in-pod launcher checks the job before DeepSpeed starts; the termination message names field and file."""
    changes, field, file = odd_token_file(tmp_path)
    job = write_job(tmp_path, {"spec": changes})
    termination = tmp_path / "termination-log"
    termination.write_text("")  # the kubelet creates it
    started = tmp_path / "deepspeed-started"
    command = [sys.executable, "-c", f"open({str(started)!r}, 'w')", "--module", "llm_trainer.worker", "--job", str(job)]
    proc = subprocess.run([sys.executable, "-m", "llm_trainer.launch", "--termination-log", str(termination),
                           "--marker-dir", str(tmp_path / "markers"), "--", *command],
                          env=rank_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_INPUT, proc.stderr
    assert not started.exists()
    message = termination.read_text()
    assert_names(message, field, file)
    assert message.rstrip().endswith(f"(exit {EXIT_INPUT})")


def test_launch_checks_only_trainer_commands(tmp_path):
    from llm_trainer.launch.cli import job_manifest

    assert job_manifest(["deepspeed", "--module", "llm_trainer.worker", "--job", "/etc/llmtraining/job.yaml"]) == "/etc/llmtraining/job.yaml"
    assert job_manifest(["deepspeed", "--module", "llm_trainer.worker", "--job=/j.yaml"]) == "/j.yaml"
    assert job_manifest(["sleep", "--job", "x"]) is None
    assert os.path.basename(job_manifest(["x", "llm_trainer.worker", "--job", str(tmp_path / "j.yaml")]) or "") == "j.yaml"
