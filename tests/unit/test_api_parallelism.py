"""Model-parallel fields (training.pipelineStages, pipelinePartition): every bad combination names its field,
the batch plan counts only the data-parallel ranks, and the API server gets the same rules as CEL."""

import pytest

from llm_operator.api import SpecError, parse_job
from llm_operator.api.crd import build_crd
from llm_operator.api.deepspeed_config import build_deepspeed_config


def problems(manifest) -> str:
    with pytest.raises(SpecError) as info:
        parse_job(manifest)
    return str(info.value)


def test_default_is_no_pipeline(manifest):
    training = parse_job(manifest).spec.training
    assert training.pipeline_stages == 1 and training.pipeline_partition == "blocks"


def test_micro_batches_per_step_are_the_accumulation_over_data_parallel_ranks(manifest):
    # 8 ranks / 2 stages = 4 data-parallel ranks; 32 sequences / (2 micro × 4) = 4 micro-batches per step
    manifest["spec"]["training"]["pipelineStages"] = 2
    spec = parse_job(manifest).spec
    assert spec.data_parallel_size == 4 and spec.batch_plan() == (2, 4, 32)
    config = build_deepspeed_config(spec)
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (32, 2, 4)


def test_global_batch_divides_by_the_data_parallel_ranks_only(manifest):
    manifest["spec"]["model"]["nLayers"] = 4
    manifest["spec"]["training"].update(pipelineStages=4, globalBatchSize=12)  # 2 × 8 / 4 = 4 divides 12
    assert parse_job(manifest).spec.batch_plan() == (2, 3, 12)
    manifest["spec"]["training"]["globalBatchSize"] = 10
    assert "microBatchSize × nodes × slotsPerNode / pipelineStages = 2 × 2 × 4 / 4 = 4" in problems(manifest)


@pytest.mark.parametrize("training, model, expected", [
    ({"pipelineStages": 2, "zeroStage": 2}, None,
     "training.zeroStage (2) must be 0 or 1 with training.pipelineStages (2) > 1"),
    ({"pipelineStages": 2, "zeroStage": 3}, None, "DeepSpeed does not combine pipeline parallelism with ZeRO-2 or ZeRO-3"),
    ({"pipelineStages": 3}, None, "training.pipelineStages (3) must divide nodes × slotsPerNode = 2 × 4 = 8"),
    ({"pipelineStages": 4}, None, "model.nLayers (2) must be divisible by training.pipelineStages (4)"),  # tiny: 2 layers
    ({"pipelineStages": 4, "pipelinePartition": "parameters"}, None, "model.nLayers (2) must be at least training.pipelineStages (4)"),
    ({"pipelineStages": 2}, {"architecture": "gpt", "nLayers": 3, "dModel": 64, "nHeads": 4},
     "model.nLayers (3) must be divisible by training.pipelineStages (2) with training.pipelinePartition blocks"),
    ({"pipelineStages": 0}, None, "spec.training.pipelineStages"),
    ({"pipelinePartition": "random"}, None, "spec.training.pipelinePartition"),
])
def test_bad_pipelines_name_the_field(manifest, training, model, expected):
    manifest["spec"]["training"].update(training)
    if model:
        manifest["spec"]["model"] = model
    assert expected in problems(manifest)


def test_pipeline_that_fits(manifest):
    manifest["spec"]["training"].update(pipelineStages=2, zeroStage=1)
    manifest["spec"]["model"] = {"architecture": "gpt", "nLayers": 3, "dModel": 64, "nHeads": 4}
    with pytest.raises(SpecError):
        parse_job(manifest)  # 3 blocks on 2 stages: not with blocks...
    manifest["spec"]["training"]["pipelinePartition"] = "parameters"
    assert parse_job(manifest).spec.training.pipeline_stages == 2  # ...but balanced by parameters


def test_the_api_server_checks_the_same_rules():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_rules = " ".join(r["rule"] for r in schema["x-kubernetes-validations"])
    training_rules = " ".join(r["rule"] for r in schema["properties"]["training"]["x-kubernetes-validations"])
    assert "(self.nodes * self.slotsPerNode) % self.training.pipelineStages == 0" in spec_rules
    assert "self.model.nLayers % self.training.pipelineStages == 0" in spec_rules
    assert "self.pipelineStages == 1 || self.zeroStage <= 1" in training_rules
    training = schema["properties"]["training"]["properties"]
    assert training["pipelineStages"]["default"] == 1 and training["pipelinePartition"]["enum"] == ["blocks", "parameters"]


def test_tensor_parallel_through_the_escape_hatch_is_refused(manifest):
    """DeepSpeed would accept it, and every tensor-parallel rank would silently train on different data."""
    manifest["spec"]["deepspeed"] = {"config": {"tensor_parallel": {"autotp_size": 2}}}
    assert "deepspeed.config.tensor_parallel is not supported by the trainer yet" in problems(manifest)
