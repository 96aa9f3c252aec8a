"""Spec validation: every bad manifest is rejected with the field path and the rule."""

import pytest

from llm_operator.api import SpecError, parse_job


def problems(manifest) -> str:
    with pytest.raises(SpecError) as info:
        parse_job(manifest)
    return str(info.value)


def test_valid_manifest_gets_defaults(manifest):
    job = parse_job(manifest)
    spec = job.spec
    assert spec.launcher.mode == "noSsh"
    assert spec.launcher.master_port == 29500
    assert spec.training.precision == "bf16"
    assert spec.training.gradient_clipping == 1.0
    assert spec.checkpoint.resume == "latest"
    assert spec.network.profile == "tcp"
    assert spec.run_policy.clean_pod_policy == "Running"
    assert job.metadata.namespace == "team-a"


def test_batch_plan_derives_gradient_accumulation(manifest):
    # 32 sequences / (2 micro × 2 nodes × 4 slots) = 2 accumulation steps
    assert parse_job(manifest).spec.batch_plan() == (2, 2, 32)


def test_global_batch_defaults_to_one_accumulation_step(manifest):
    del manifest["spec"]["training"]["globalBatchSize"]
    assert parse_job(manifest).spec.batch_plan() == (2, 1, 16)


def test_indivisible_global_batch_shows_the_arithmetic(manifest):
    manifest["spec"]["training"]["globalBatchSize"] = 40
    message = problems(manifest)
    assert "training.globalBatchSize (40)" in message
    assert "microBatchSize × nodes × slotsPerNode = 2 × 2 × 4 = 16" in message


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("spec", "nodes"), 0, "spec.nodes: Input should be greater than or equal to 1"),
        (("spec", "slotsPerNode"), -1, "spec.slotsPerNode"),
        (("spec", "training", "zeroStage"), 4, "spec.training.zeroStage"),
        (("spec", "training", "precision"), "fp8", "spec.training.precision"),
        (("spec", "launcher", "mode"), "mpi", "spec.launcher.mode"),
        (("spec", "network", "profile"), "myrinet", "spec.network.profile"),
        (("spec", "network", "shmSize"), "lots", None),  # pattern checked by the API server, plain string here
        (("spec", "runPolicy", "cleanPodPolicy"), "Sometimes", "spec.runPolicy.cleanPodPolicy"),
        (("spec", "model", "preset"), "gpt5", "spec.model.preset"),
        (("spec", "training", "learningRate"), 0, "spec.training.learningRate"),
        (("spec", "monitoring", "port"), 80, "spec.monitoring.port"),
    ],
)
def test_field_errors_name_the_field(manifest, path, value, expected):
    node = manifest
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    if expected is None:
        parse_job(manifest)
        return
    assert expected in problems(manifest)


def test_unknown_field_is_rejected_not_ignored(manifest):
    manifest["spec"]["training"]["learnigRate"] = 1e-3
    assert "spec.training.learnigRate: Extra inputs are not permitted" in problems(manifest)


def test_missing_image_and_model(manifest):
    del manifest["spec"]["image"]
    assert "spec.image: Field required" in problems(manifest)
    manifest["spec"]["image"] = "trainer:1"
    del manifest["spec"]["model"]
    assert "set model (the built-in trainer) or program (your own training program)" in problems(manifest)


def test_model_needs_preset_or_shape(manifest):
    manifest["spec"]["model"] = {"architecture": "llama", "nLayers": 2}
    assert "set model.preset, model.huggingFacePath, or all of architecture, nLayers, dModel and nHeads" in problems(manifest)


def test_model_head_divisibility(manifest):
    manifest["spec"]["model"] = {"preset": "tiny", "nHeads": 3}
    assert "model.dModel (64) must be divisible by model.nHeads (3)" in problems(manifest)
    manifest["spec"]["model"] = {"preset": "tiny-llama", "nKvHeads": 3}
    assert "model.nHeads (4) must be divisible by model.nKvHeads (3)" in problems(manifest)


def test_preset_fields_are_overridable(manifest):
    manifest["spec"]["model"] = {"preset": "gpt2-124m", "seqLen": 2048}
    resolved = parse_job(manifest).spec.model.resolved()
    assert resolved["seqLen"] == 2048 and resolved["nLayers"] == 12 and resolved["ffnHidden"] == 3072


def test_llama_defaults(manifest):
    manifest["spec"]["model"] = {"architecture": "llama", "nLayers": 2, "dModel": 96, "nHeads": 4}
    resolved = parse_job(manifest).spec.model.resolved()
    assert resolved["nKvHeads"] == 4
    assert resolved["ffnHidden"] == 256  # ceil(8/3 × 96 / 64) × 64
    assert resolved["tieEmbeddings"] is False


def test_text_data_needs_paths_and_tokenizer(manifest):
    manifest["spec"]["data"] = {"format": "jsonl", "paths": ["a.jsonl"]}
    assert "data.tokenizer is required for text and jsonl data" in problems(manifest)
    manifest["spec"]["data"] = {"format": "tokens"}
    assert "data.paths is required unless data.format is synthetic" in problems(manifest)


def test_offload_rules(manifest):
    manifest["spec"]["training"]["offload"] = {"parameters": "cpu"}
    assert "training.offload.parameters needs training.zeroStage 3" in problems(manifest)
    manifest["spec"]["training"].update(zeroStage=0, offload={"optimizer": "cpu"})
    assert "training.offload.optimizer needs training.zeroStage 1 or higher" in problems(manifest)


def test_warmup_longer_than_training(manifest):
    manifest["spec"]["training"]["warmupSteps"] = 11
    assert "training.warmupSteps (11) must not exceed training.steps (10)" in problems(manifest)


def test_fp16_needs_gpu(manifest):
    manifest["spec"].update(accelerator="cpu")
    manifest["spec"]["training"]["precision"] = "fp16"
    assert "fp16 needs accelerator gpu" in problems(manifest)


def test_gpu_limit_must_match_slots(manifest):
    manifest["spec"]["resources"] = {"limits": {"nvidia.com/gpu": 8}}
    assert "resources.limits nvidia.com/gpu (8) must equal slotsPerNode (4)" in problems(manifest)


def test_resume_tag_format(manifest):
    manifest["spec"]["checkpoint"] = {"resume": "../etc"}
    assert "checkpoint.resume must be latest, none, or a checkpoint tag" in problems(manifest)


class TestNameLength:
    @pytest.fixture(autouse=True)
    def _no_batch_constraint(self, manifest):
        del manifest["spec"]["training"]["globalBatchSize"]

    def test_longest_valid_name(self, manifest):
        manifest["spec"]["nodes"] = 10  # pods up to -worker-9: 8 + 1 characters
        manifest["metadata"]["name"] = "a" * (63 - 9)
        parse_job(manifest)

    def test_one_character_too_long(self, manifest):
        manifest["spec"]["nodes"] = 10
        manifest["metadata"]["name"] = "a" * (63 - 8)
        message = problems(manifest)
        assert "metadata.name is too long" in message
        assert "has 64 characters, more than 63" in message

    def test_more_nodes_shorten_the_limit(self, manifest):
        manifest["spec"]["nodes"] = 100
        manifest["metadata"]["name"] = "a" * (63 - 9)
        assert "at most 53 characters with 100 nodes" in problems(manifest)

    @pytest.mark.parametrize("name", ["1job", "Job", "job-", "job.x"])
    def test_service_name_must_be_dns_1035(self, manifest, name):
        manifest["metadata"]["name"] = name
        assert "must be a DNS-1035 label" in problems(manifest)


def test_non_mapping_manifest():
    with pytest.raises(SpecError, match="expected a mapping"):
        parse_job(["not", "a", "job"])


def test_immutability_rules_name_every_field_but_suspend():
    """The CEL transition rules list fields by name: a new field must be added there (or made mutable on purpose)."""
    from llm_operator.api.v1alpha1 import (IMMUTABLE_OPTIONAL_RUN_POLICY_FIELDS, IMMUTABLE_OPTIONAL_SPEC_FIELDS, IMMUTABLE_RUN_POLICY_FIELDS,
                                           IMMUTABLE_SPEC_FIELDS, LLMTrainingJobSpec, RunPolicy)

    spec_fields = {f.alias: f for f in LLMTrainingJobSpec.model_fields.values()}
    assert set(IMMUTABLE_SPEC_FIELDS) | set(IMMUTABLE_OPTIONAL_SPEC_FIELDS) == set(spec_fields) - {"runPolicy"}
    # data, training and deepspeed default in pydantic but not in the CRD (NO_OBJECT_DEFAULT): absent there means absent
    assert all(not spec_fields[f].is_required() for f in IMMUTABLE_OPTIONAL_SPEC_FIELDS)
    run_policy = {name: f for name, f in ((f.alias, f) for f in RunPolicy.model_fields.values())}
    assert set(IMMUTABLE_RUN_POLICY_FIELDS) | set(IMMUTABLE_OPTIONAL_RUN_POLICY_FIELDS) == set(run_policy) - {"suspend"}
    assert all(not run_policy[f].is_required() and run_policy[f].default is None for f in IMMUTABLE_OPTIONAL_RUN_POLICY_FIELDS)
