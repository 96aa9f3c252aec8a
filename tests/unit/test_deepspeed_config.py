"""build_deepspeed_config: batch plan, explicit clipping, precision, ZeRO/offload, the override merge."""

import copy
import json

import pytest

from llm_operator.api import parse_job
from llm_operator.api.deepspeed_config import build_deepspeed_config, deep_merge


def config(manifest, **training):
    manifest = copy.deepcopy(manifest)
    manifest["spec"]["training"].update(training)
    return build_deepspeed_config(parse_job(manifest).spec)


def test_batch_fields_come_from_the_batch_plan(manifest):
    # 32 sequences = 2 micro × 2 nodes × 4 slots × 2 accumulation steps
    c = config(manifest)
    assert (c["train_batch_size"], c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"]) == (32, 2, 2)
    assert c["train_batch_size"] == c["train_micro_batch_size_per_gpu"] * c["gradient_accumulation_steps"] * 8


def test_defaults_are_explicit(manifest):
    c = config(manifest)
    assert c["gradient_clipping"] == 1.0
    assert c["zero_optimization"] == {"stage": 1}
    assert c["steps_per_print"] >= 10**9 and c["wall_clock_breakdown"] is False
    # bf16 by default, through torch autocast (fp32 master parameters) at ZeRO 1
    assert c["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert c["bf16"] == {"enabled": False} and c["fp16"] == {"enabled": False}
    assert "optimizer" not in c and "scheduler" not in c  # the trainer builds fused AdamW and the LambdaLR
    json.dumps(c)  # goes into a ConfigMap as JSON


@pytest.mark.parametrize("clip", [0.0, 0.5, 2.0])
def test_gradient_clipping_is_always_written(manifest, clip):
    assert config(manifest, gradientClipping=clip)["gradient_clipping"] == clip


def test_fp16_uses_dynamic_loss_scaling(manifest):
    c = config(manifest, precision="fp16")
    assert c["fp16"]["enabled"] is True and c["fp16"]["loss_scale"] == 0
    assert c["bf16"] == {"enabled": False} and "torch_autocast" not in c


def test_fp32_disables_every_low_precision_mode(manifest):
    c = config(manifest, precision="fp32")
    assert c["bf16"] == {"enabled": False} and c["fp16"] == {"enabled": False} and "torch_autocast" not in c


def test_bf16_parameters_for_zero3_and_offload(manifest):
    c = config(manifest, zeroStage=3)
    assert c["bf16"] == {"enabled": True} and "torch_autocast" not in c
    assert c["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert c["zero_optimization"]["overlap_comm"] is True
    c = config(manifest, zeroStage=2, offload={"optimizer": "cpu"})
    assert c["bf16"] == {"enabled": True} and "torch_autocast" not in c


def test_offload_sections_and_the_ds_built_optimizer(manifest):
    c = config(manifest, zeroStage=3, offload={"optimizer": "nvme", "parameters": "cpu", "nvmePath": "/nvme"},
               learningRate=1e-4, adamBeta2=0.99, weightDecay=0.05)
    zero = c["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "nvme", "pin_memory": True, "nvme_path": "/nvme"}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert c["optimizer"]["type"] == "AdamW"
    assert c["optimizer"]["params"]["lr"] == 1e-4
    assert c["optimizer"]["params"]["betas"] == [0.9, 0.99]
    assert c["optimizer"]["params"]["weight_decay"] == 0.05


def test_override_is_deep_merged_last(manifest):
    manifest["spec"]["deepspeed"] = {"config": {
        "zero_optimization": {"reduce_bucket_size": 5e8}, "gradient_clipping": 0.3, "train_batch_size": 32,
        "comms_logger": {"enabled": True}}}
    job = parse_job(manifest)
    before = copy.deepcopy(job.spec.deepspeed.config)
    c = build_deepspeed_config(job.spec)
    assert c["zero_optimization"] == {"stage": 1, "reduce_bucket_size": 5e8}
    assert c["gradient_clipping"] == 0.3
    assert c["comms_logger"] == {"enabled": True}
    assert job.spec.deepspeed.config == before  # pure


@pytest.mark.parametrize("key,value", [("train_batch_size", 64), ("train_micro_batch_size_per_gpu", 4),
                                       ("gradient_accumulation_steps", 1)])
def test_override_may_not_contradict_the_batch_plan(manifest, key, value):
    manifest["spec"]["deepspeed"] = {"config": {key: value}}
    with pytest.raises(ValueError, match=rf"spec\.deepspeed\.config\.{key} \({value}\)"):
        build_deepspeed_config(parse_job(manifest).spec)


def test_deep_merge_replaces_non_mappings_and_copies():
    base = {"a": {"b": 1, "c": [1]}, "d": 1}
    merged = deep_merge(base, {"a": {"c": [2]}, "d": {"e": 1}})
    assert merged == {"a": {"b": 1, "c": [2]}, "d": {"e": 1}}
    assert base == {"a": {"b": 1, "c": [1]}, "d": 1}
