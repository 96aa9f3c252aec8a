"""Qwen2/2.5, Qwen3 and Mistral (and Llama) against transformers: random tiny models built from a transformers config.

For each family: our logits and first loss and gradients equal transformers' on the same batch, and our export loads
back into transformers with the same logits. Unsupported configs are refused naming the field and the file.
"""

from __future__ import annotations

import json

import pytest
import torch

from llm_operator.api.presets import PRESETS
from llm_operator.api.v1alpha1 import ModelSpec
from llm_trainer.hf import hf_config, load_hf_config, load_hf_weights, read_hf_config, save_hf_model
from llm_trainer.model import ModelConfig, build_model, count_params

SEQ = 24
TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6)
FAMILIES = {
    "llama": dict(rope_theta=10000.0, tie_word_embeddings=False),
    "qwen2": dict(rope_theta=1000000.0, tie_word_embeddings=True),  # q/k/v bias
    "qwen3": dict(rope_theta=1000000.0, tie_word_embeddings=True, head_dim=16),  # q/k norm; head_dim != 32 / 4
    "mistral": dict(rope_theta=1000000.0, tie_word_embeddings=False, sliding_window=7),  # a window shorter than SEQ
}


def transformers_model(family: str, **overrides):
    """A random transformers model of the family, every weight perturbed (biases and norm weights too)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, **{**TINY, **FAMILIES[family], **overrides}, attn_implementation="eager")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def batch(vocab: int, rows: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, SEQ + 1), generator=torch.Generator().manual_seed(1))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_import_matches_transformers_logits_loss_and_gradients(family, tmp_path):
    hf = transformers_model(family)
    hf.save_pretrained(tmp_path / "hf")
    cfg = load_hf_config(tmp_path / "hf", seq_len=SEQ)
    assert cfg.architecture == family and cfg.qkv_bias == (family == "qwen2") and cfg.qk_norm == (family == "qwen3")
    assert cfg.tie_embeddings == FAMILIES[family]["tie_word_embeddings"]
    ours = build_model(cfg, seed=0)
    load_hf_weights(ours, tmp_path / "hf")

    window = batch(cfg.vocab_size)
    with torch.no_grad():
        assert max_diff(ours(window[:, :-1]), hf(window[:, :-1]).logits) <= 1e-5
    # the first training loss: our (inputs, targets) against transformers' labels (shifted inside the model)
    ours.train()
    hf.train()
    loss = ours(window[:, :-1], window[:, 1:])
    hf_loss = hf(window, labels=window).loss
    assert abs(loss.item() - hf_loss.item()) <= 1e-5, (loss.item(), hf_loss.item())
    loss.backward()
    hf_loss.backward()
    theirs = dict(hf.named_parameters())
    for name, p in ours.named_parameters():  # the same module names: hf.py copies weights by name
        assert max_diff(p.grad, theirs[name].grad) <= 1e-5, name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_export_loads_in_transformers_with_equal_logits(family, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = load_hf_config_of(family, tmp_path)
    ours = build_model(cfg, seed=5)
    with torch.no_grad():  # nonzero biases and norm weights, so that a dropped one shows
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_hf_model(cfg, ours.state_dict(), tmp_path / "export")
    exported = read_hf_config(tmp_path / "export")
    assert exported["model_type"] == family and exported["architectures"] == [type_name(family)]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32, attn_implementation="eager").eval()
    assert type(hf).__name__ == type_name(family)
    assert sum(p.numel() for p in hf.parameters()) == count_params(cfg)  # nothing left out or added on load
    idx = batch(cfg.vocab_size)[:, :SEQ]
    with torch.no_grad():
        assert max_diff(ours.eval()(idx), hf(idx).logits) <= 1e-5
    assert load_hf_config(tmp_path / "export", seq_len=SEQ) == cfg  # and round trips


def load_hf_config_of(family: str, tmp_path) -> ModelConfig:
    transformers_model(family).config.save_pretrained(tmp_path / "config")
    return load_hf_config(tmp_path / "config", seq_len=SEQ)


def type_name(family: str) -> str:
    return {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
            "mistral": "MistralForCausalLM"}[family]


def test_the_mistral_window_cuts_attention():
    """The window is applied (not only carried): without it the later positions' logits differ."""
    cfg = ModelConfig("mistral", n_layers=1, d_model=32, n_heads=4, n_kv_heads=2, ffn_hidden=64, seq_len=SEQ, vocab_size=64,
                      tie_embeddings=False, sliding_window=7)
    windowed, full = build_model(cfg, seed=0), build_model(cfg.replace(sliding_window=None), seed=0)
    idx = batch(64)[:, :SEQ]
    with torch.no_grad():
        a, b = windowed(idx), full(idx)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)  # within the window: the same keys
    assert max_diff(a[:, 7:], b[:, 7:]) > 1e-3


# ------------------------------------------------------------------------------------------- refused
@pytest.mark.parametrize("family, change, field", [
    ("gemma", {}, "model_type: 'gemma'"),
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window: True"),
    ("qwen3", {"use_sliding_window": True}, "use_sliding_window: True"),
    ("qwen3", {"attention_bias": True}, "attention_bias: True"),
    ("llama", {"mlp_bias": True}, "mlp_bias: True"),
    ("mistral", {"hidden_act": "gelu"}, "hidden_act: 'gelu'"),
    ("qwen2", {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
     "rope_scaling.rope_type: 'yarn'"),
])
def test_unsupported_configs_are_refused_naming_field_and_file(family, change, field, tmp_path):
    config = {"model_type": family, **TINY, **FAMILIES.get(family, {}), **change}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        load_hf_config(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'config.json'}: {field}"), err.value


def test_preflight_names_the_field_and_file(tmp_path):
    """`llm-train validate` reports the refusal before any model is built."""
    from llm_operator.api.v1alpha1 import LLMTrainingJobSpec
    from llm_trainer.preflight import PreflightError, check

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3", **TINY, "use_sliding_window": True}))
    spec = LLMTrainingJobSpec.model_validate({"image": "x", "model": {"huggingFacePath": str(tmp_path)}})
    with pytest.raises(PreflightError) as err:
        check(spec)
    problems = err.value.problems
    assert any(p.startswith(f"model.huggingFacePath: {tmp_path / 'config.json'}: use_sliding_window: True") for p in problems), problems


# -------------------------------------------------------------------------------------------- presets
PUBLISHED = {  # parameters of the released models (their model cards), tied embeddings counted once
    "qwen2.5-0.5b": 0.494e9, "qwen2.5-1.5b": 1.54e9, "qwen2.5-7b": 7.62e9,
    "qwen3-0.6b": 0.596e9, "qwen3-1.7b": 1.72e9, "qwen3-8b": 8.19e9, "mistral-7b": 7.25e9,
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_family_presets_are_the_released_shapes(preset):
    """Our count is transformers' own count of the exported config's model (meta device), and the published size."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = ModelConfig.from_resolved(ModelSpec.model_validate({"preset": preset}).resolved())
    exported = hf_config(cfg, torch.bfloat16)
    config = AutoConfig.for_model(exported.pop("model_type"), **exported)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config)
    assert type(hf).__name__ == exported["architectures"][0]
    assert sum(p.numel() for p in hf.parameters()) == count_params(cfg)
    assert count_params(cfg) == pytest.approx(PUBLISHED[preset], rel=0.01)
    assert cfg.tie_embeddings == PRESETS[preset]["tieEmbeddings"] and cfg.rope_theta == 1e6


# ------------------------------------------------------------------------------------ DeepSpeed run
@pytest.mark.trainer
def test_qwen3_start_trains_on_cpu_ranks_from_transformers_loss(tmp_path):
    """Two CPU ranks fine-tune a transformers-built Qwen3: step 1's loss is transformers' own on the same micro-batches,
    and the exported model loads in transformers as a Qwen3 that learned."""
    from transformers import AutoModelForCausalLM

    from llm_operator.api import load_job_file
    from llm_trainer.data import build_loader, build_source

    from trainer_testlib import run_ranks, write_job

    hf = transformers_model("qwen3")
    hf.save_pretrained(tmp_path / "start")
    job = write_job(tmp_path, {"spec": {
        "model": {"preset": None, "huggingFacePath": str(tmp_path / "start"), "seqLen": SEQ},
        "training": {"steps": 6, "globalBatchSize": 4, "microBatchSize": 2, "learningRate": 0.003, "warmupSteps": 1},
        "checkpoint": {"intervalSteps": 6}}})
    run = run_ranks(job, tmp_path / "out")
    assert run.codes == [0, 0], run.log_tail()

    spec = load_job_file(str(job)).spec
    source = build_source(spec.data, TINY["vocab_size"], SEQ, spec.training.seed, tmp_path / "out" / "data-cache",
                          tokenize_here=False)
    expected = []
    with torch.no_grad():
        for rank in (0, 1):
            loader = build_loader(source, seed=spec.training.seed, rank=rank, world_size=2, micro_batch=2,
                                  device=torch.device("cpu"), vocab_size=TINY["vocab_size"])
            inputs, targets = next(loader)
            assert torch.equal(inputs[:, 1:], targets[:, :-1])
            window = torch.cat([inputs, targets[:, -1:]], dim=1)
            expected.append(hf(window, labels=window).loss.item())
    assert run.losses[1] == pytest.approx(sum(expected) / 2, rel=1e-5)
    assert run.losses[6] < run.losses[1]

    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model", dtype=torch.float32).eval()
    assert type(trained).__name__ == "Qwen3ForCausalLM"
    assert trained.model.layers[0].self_attn.q_norm.weight.shape == (16,)
    assert not torch.equal(trained.model.layers[0].self_attn.q_norm.weight, hf.model.layers[0].self_attn.q_norm.weight)
