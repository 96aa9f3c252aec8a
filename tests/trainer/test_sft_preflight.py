"""Bad SFT input: each a clear error from `llm-train validate` naming the field, the file and the row, and the worker
stops on it before any model is built."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llm_trainer import cli, worker
from llm_trainer.preflight import PreflightError

from trainer_testlib import write_job

DATA = Path(__file__).resolve().parent / "data"
GOOD = {"messages": [{"role": "user", "content": "Spell two."}, {"role": "assistant", "content": "two is spelled t-w-o."}]}
TWO_EXCHANGES = {"messages": GOOD["messages"] * 2}


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def sft_job(d: Path, paths: list[str], tokenizer: Path = DATA / "chatml", **data) -> Path:
    return write_job(d, {"spec": {"slotsPerNode": 1, "model": {"preset": "tiny-llama", "vocabSize": 320, "seqLen": 64},
                                  "training": {"globalBatchSize": 2},
                                  "data": {"format": "chat", "paths": paths, "tokenizer": str(tokenizer), **data}}})


def validate(job: Path, capsys) -> list[str]:
    assert cli.main(["validate", str(job)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no plan printed
    return captured.err.splitlines()


def line_naming(lines: list[str], *parts: str) -> str:
    found = [line for line in lines if all(p in line for p in parts)]
    assert found, f"no line names {parts}:\n" + "\n".join(lines)
    return found[0]


def test_bad_rows_each_named_by_field_file_and_row(tmp_path, capsys):
    no_messages = jsonl(tmp_path / "no-messages.jsonl", [GOOD, {"text": "hello"}])
    unknown_role = jsonl(tmp_path / "unknown-role.jsonl", [GOOD, GOOD, {"messages": [{"role": "robot", "content": "x"}, GOOD["messages"][1]]}])
    no_assistant = jsonl(tmp_path / "no-assistant.jsonl", [{"messages": [GOOD["messages"][0]]}])
    not_json = jsonl(tmp_path / "not-json.jsonl", [GOOD, "{oops"])
    lines = validate(sft_job(tmp_path, [no_messages, unknown_role, no_assistant, not_json]), capsys)
    assert "no field 'messages'" in line_naming(lines, "data.paths", f"{no_messages}:2")
    assert "messages[0].role 'robot' is not one of system, user, assistant, tool" in line_naming(lines, "data.paths", f"{unknown_role}:3")
    assert "no assistant turn" in line_naming(lines, "data.paths", f"{no_assistant}:1")
    assert "not JSON" in line_naming(lines, "data.paths", f"{not_json}:2")
    assert len(lines) == 5  # the header line and one per bad row: the good rows pass


def test_a_template_that_does_not_render_names_the_tokenizer_and_the_row(tmp_path, capsys):
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(DATA / "chatml", tokenizer)
    config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% if messages | length > 2 %}{{ raise_exception('one exchange only') }}{% endif %}" + config["chat_template"]
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(config))
    train = jsonl(tmp_path / "train.jsonl", [GOOD, TWO_EXCHANGES])
    held_out = jsonl(tmp_path / "eval.jsonl", [TWO_EXCHANGES])
    lines = validate(sft_job(tmp_path, [train], tokenizer, validation={"paths": [held_out]}), capsys)
    line = line_naming(lines, "data.tokenizer", str(tokenizer / "tokenizer_config.json"), f"{train}:2", "data.paths")
    assert "the chat template does not render: one exchange only" in line
    line_naming(lines, "data.tokenizer", f"{held_out}:1", "data.validation.paths")


def test_chat_data_needs_a_tokenizer_with_a_chat_template(tmp_path, capsys):
    train = jsonl(tmp_path / "train.jsonl", [GOOD])
    lines = validate(sft_job(tmp_path, [train], DATA / "chatml" / "tokenizer.json"), capsys)
    assert "no chat_template" in line_naming(lines, "data.tokenizer", str(DATA / "chatml" / "tokenizer.json"))


def test_good_chat_data_validates(tmp_path, capsys):
    job = sft_job(tmp_path, [str(DATA / "chat-train.jsonl")], packing=True, validation={"paths": [str(DATA / "chat-eval.jsonl")]})
    assert cli.main(["validate", str(job)]) == 0, capsys.readouterr().err


def test_worker_stops_on_a_bad_row_before_the_model_is_built(tmp_path, monkeypatch):
    train = jsonl(tmp_path / "train.jsonl", [GOOD, {"messages": [{"role": "user", "content": "x"}]}])
    built = []
    monkeypatch.setattr(worker, "init_distributed", lambda *a: built.append("distributed"))
    monkeypatch.setattr(worker, "build_model", lambda *a, **k: built.append("model"))
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(PreflightError, match=f"data.paths: {train}:2: no assistant turn"):
        worker.main(["--job", str(sft_job(tmp_path, [train])), "--output-dir", str(tmp_path / "out")])
    assert built == []


def test_prompt_completion_rows_need_both_fields(tmp_path, capsys):
    train = jsonl(tmp_path / "train.jsonl", [{"prompt": "Spell two.", "completion": " t-w-o"}, {"prompt": "Spell one."}])
    job = write_job(tmp_path, {"spec": {"slotsPerNode": 1, "model": {"preset": "tiny-llama", "vocabSize": 320},
                                        "training": {"globalBatchSize": 2},
                                        "data": {"format": "promptCompletion", "paths": [train], "tokenizer": str(DATA / "chatml")}}})
    lines = validate(job, capsys)
    assert "no field 'completion'" in line_naming(lines, "data.paths", f"{train}:2")
    assert len(lines) == 2
