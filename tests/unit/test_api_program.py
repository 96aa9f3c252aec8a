"""spec.program: the user's own training program instead of the built-in trainer (issue 18)."""

from __future__ import annotations

import pytest

from llm_operator.api import SpecError, parse_job
from llm_operator.api.crd import build_crd


def program_job(**spec) -> dict:
    return {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": "sft"},
            "spec": {"image": "team/sft:3", "nodes": 2, "slotsPerNode": 2, "accelerator": "cpu",
                     "program": {"command": ["python", "train.py"]}, **spec}}


def problems(manifest: dict) -> str:
    with pytest.raises(SpecError) as err:
        parse_job(manifest)
    return str(err.value)


def test_a_program_job_needs_no_model_and_defaults_to_the_deepspeed_launcher():
    job = parse_job(program_job())
    assert job.spec.model is None and job.spec.program is not None
    assert job.spec.program.launcher == "deepspeed" and job.spec.program.command == ["python", "train.py"]
    assert job.spec.world_size == 4


@pytest.mark.parametrize("field, value", [("model", {"preset": "tiny"}), ("data", {"format": "synthetic"}),
                                          ("training", {"steps": 3}), ("deepspeed", {"config": {"zero_optimization": {"stage": 2}}}), ("data", {})])
def test_program_with_a_builtin_trainer_field_is_refused_naming_it(field, value):
    message = problems(program_job(**{field: value}))
    assert f"{field} configures the built-in trainer and cannot be combined with program: remove {field}" in message


@pytest.mark.parametrize("command", [[], [""]])
def test_an_empty_command_is_refused(command):
    assert "program.command must name the program to run" in problems(program_job(program={"command": command}))


def test_an_unknown_launcher_is_refused_naming_the_field():
    assert "spec.program.launcher" in problems(program_job(program={"command": ["x"], "launcher": "mpirun"}))


def test_neither_model_nor_program_is_refused():
    manifest = program_job()
    del manifest["spec"]["program"]
    assert "set model (the built-in trainer) or program" in problems(manifest)


def spec_schema() -> dict:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def test_the_crd_refuses_the_same_combinations_in_cel_naming_the_field():
    rules = {rule.get("fieldPath"): rule for rule in spec_schema()["x-kubernetes-validations"]}
    for field in ("model", "data", "training", "deepspeed"):
        assert rules[f".{field}"]["rule"] == f"!has(self.program) || !has(self.{field})"
    program = spec_schema()["properties"]["program"]
    assert program["properties"]["launcher"]["enum"] == ["deepspeed", "torchrun", "exec"]
    assert any("self.command.size() > 0" in rule["rule"] for rule in program["x-kubernetes-validations"])


def test_builtin_trainer_objects_get_no_object_default_so_the_api_server_can_tell_them_apart():
    spec = spec_schema()["properties"]
    for field in ("data", "training", "deepspeed"):
        assert "default" not in spec[field], field
        assert not any(key.startswith("x-llmto") for key in spec[field])
    assert spec["training"]["properties"]["precision"]["default"] == "bf16"  # inner defaults still apply


def test_llm_train_validate_refuses_program_with_model_and_accepts_a_program_job(tmp_path, capsys):
    import json

    import yaml

    from llm_trainer.cli import main

    bad, good = tmp_path / "bad.yaml", tmp_path / "good.yaml"
    bad.write_text(yaml.safe_dump(program_job(model={"preset": "tiny"})))
    good.write_text(yaml.safe_dump(program_job()))
    assert main(["validate", str(bad)]) == 1
    assert "model configures the built-in trainer and cannot be combined with program" in capsys.readouterr().err
    assert main(["validate", str(good)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["ranks"] == 4 and plan["program"]["launcher"] == "deepspeed"
