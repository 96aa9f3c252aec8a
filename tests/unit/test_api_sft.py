"""Spec validation of supervised fine-tuning fields (issue 21): data.format chat/promptCompletion, data.packing, training.lossOn."""

import pytest

from llm_operator.api import SpecError, parse_job


def chat(manifest, **data):
    manifest["spec"]["data"] = {"format": "chat", "paths": ["train.jsonl"], "tokenizer": "tok", **data}
    return manifest


def problems(manifest) -> str:
    with pytest.raises(SpecError) as info:
        parse_job(manifest)
    return str(info.value)


def test_chat_defaults(manifest):
    spec = parse_job(chat(manifest)).spec
    assert spec.data.packing is False and spec.training.loss_on is None  # None: assistant for SFT data (rundir, worker)


@pytest.mark.parametrize("fmt", ["chat", "promptCompletion"])
def test_sft_data_needs_a_tokenizer(manifest, fmt):
    manifest["spec"]["data"] = {"format": fmt, "paths": ["train.jsonl"]}
    assert "data.tokenizer is required for chat and promptCompletion data" in problems(manifest)


def test_packing_is_for_sft_data(manifest):
    manifest["spec"]["data"] = {"format": "jsonl", "paths": ["a.jsonl"], "tokenizer": "t.json", "packing": True}
    assert "data.packing needs data.format chat or promptCompletion" in problems(manifest)


def test_loss_on_assistant_is_for_sft_data(manifest):
    manifest["spec"]["training"]["lossOn"] = "assistant"
    assert "training.lossOn assistant needs data.format chat or promptCompletion" in problems(manifest)
    manifest["spec"]["training"]["lossOn"] = "all"
    parse_job(manifest)  # every token: what other formats do anyway


def test_pipeline_stages_and_fraction_are_refused_with_sft_data(manifest):
    manifest["spec"]["training"]["pipelineStages"] = 2
    manifest["spec"]["slotsPerNode"] = 2
    manifest["spec"]["training"].pop("globalBatchSize", None)
    assert "training.pipelineStages (2) > 1 does not support data.format chat" in problems(chat(manifest))
    manifest["spec"]["training"]["pipelineStages"] = 1
    assert "data.validation.fraction: data.format chat holds out whole examples" in problems(chat(manifest, validation={"fraction": 0.1}))
    parse_job(chat(manifest, validation={"paths": ["eval.jsonl"]}))
