"""Model shapes, parameter counts, FLOPs, RoPE, activation checkpointing and the Hugging Face directories."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_operator.api.presets import PRESETS
from llm_operator.api.v1alpha1 import ModelSpec
from llm_trainer.hf import (config_from_hf, hf_config, load_hf_weights, read_hf_config, read_hf_state_dict,
                            save_hf_model)
from llm_trainer.model import ModelConfig, apply_rope, build_model, count_params, flops_per_token, rope_tables


def cfg_of(preset: str, **fields) -> ModelConfig:
    return ModelConfig.from_resolved(ModelSpec.model_validate({"preset": preset, **fields}).resolved())


def meta_model(cfg: ModelConfig):
    return build_model(cfg, seed=0, device="meta")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_count_params_matches_the_built_model(preset):
    cfg = cfg_of(preset)
    model = meta_model(cfg)
    total = sum(p.numel() for p in model.parameters())  # tied embedding counted once
    assert count_params(cfg, exclude_positions=False) == total
    positions = model.transformer.wpe.weight.numel() if cfg.architecture == "gpt" else 0
    assert count_params(cfg) == total - positions


def test_reference_sizes():
    assert 123e6 < count_params(cfg_of("gpt2-124m"), exclude_positions=False) < 125e6  # GPT-2 small: 124M
    assert 350e6 < count_params(cfg_of("gpt2-350m")) < 360e6
    assert 1.23e9 < count_params(cfg_of("llama-1b")) < 1.24e9  # Llama 3.2 1B: 1.236B
    assert 7.9e9 < count_params(cfg_of("llama-8b")) < 8.1e9  # Llama 3.1 8B: 8.03B


def test_flops_per_token_is_palm_formula():
    cfg = cfg_of("gpt2-124m")
    # gpu_baseline.py's count: all parameters except the position table, tied embedding once
    n = 12 * (2 * 2 * 768 + 768 * 2304 + 2304 + 768 * 768 + 768 + 768 * 3072 + 3072 + 3072 * 768 + 768) + 2 * 768 + 50304 * 768
    assert count_params(cfg) == n
    assert flops_per_token(cfg) == 6 * n + 12 * 12 * 12 * 64 * 1024
    llama = cfg_of("llama-1b")  # GQA: the attention term counts query heads
    assert flops_per_token(llama) == 6 * count_params(llama) + 12 * 16 * 32 * 64 * 2048


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_forward_shapes_and_loss(preset):
    cfg = cfg_of(preset)
    model = build_model(cfg, seed=1)
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.seq_len))
    assert model(idx).shape == (3, cfg.seq_len, cfg.vocab_size)
    loss = model(idx, torch.randint(0, cfg.vocab_size, (3, cfg.seq_len)))
    assert loss.shape == () and abs(loss.item() - torch.log(torch.tensor(float(cfg.vocab_size))).item()) < 0.5
    shorter = model(idx[:, :10])
    assert shorter.shape == (3, 10, cfg.vocab_size)
    # causal: the first positions do not see the later ones
    torch.testing.assert_close(shorter, model(idx)[:, :10], rtol=1e-5, atol=1e-5)


def test_same_seed_same_weights_and_tied_head():
    a, b = build_model(cfg_of("tiny"), seed=3), build_model(cfg_of("tiny"), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.lm_head.weight is a.transformer.wte.weight
    llama = build_model(cfg_of("tiny-llama"), seed=3)
    assert llama.lm_head.weight is not llama.model.embed_tokens.weight  # llama default: untied


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_activation_checkpointing_gives_the_same_gradients(preset):
    cfg = cfg_of(preset)
    plain, ckpt = build_model(cfg, seed=2), build_model(cfg.replace(activation_checkpointing=True), seed=2)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    plain(idx, idx).backward()
    ckpt(idx, idx).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_rope_keeps_norms_and_encodes_relative_position():
    cfg = cfg_of("tiny-llama")
    cos, sin = rope_tables(cfg)
    q, k = torch.randn(cfg.head_dim), torch.randn(cfg.head_dim)
    rq, rk = apply_rope(q.expand(cfg.seq_len, -1), cos, sin), apply_rope(k.expand(cfg.seq_len, -1), cos, sin)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(cfg.seq_len))
    # <R_m q, R_n k> depends on m - n only
    torch.testing.assert_close(rq[5] @ rk[2], rq[13] @ rk[10], rtol=1e-4, atol=1e-4)


def test_llama3_rope_scaling_slows_only_low_frequencies():
    cfg = cfg_of("tiny-llama").replace(rope_theta=500000.0, seq_len=64)
    scaled = cfg.replace(rope_scaling={"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 32})
    (c0, s0), (c1, s1) = rope_tables(cfg), rope_tables(scaled)
    torch.testing.assert_close(c0[:, 0], c1[:, 0])  # highest frequency unchanged
    low = cfg.head_dim // 2 - 1  # lowest frequency: divided by factor (sin x ≈ x for these tiny angles)
    torch.testing.assert_close(s1[1:, low] / s0[1:, low], torch.full((cfg.seq_len - 1,), 1 / 32), rtol=1e-3, atol=0)


# ------------------------------------------------------------------------------ Hugging Face dirs
@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_export_then_load_reproduces_the_model(preset, tmp_path):
    cfg = cfg_of(preset)
    model = build_model(cfg, seed=4)
    save_hf_model(cfg, model.state_dict(), tmp_path / "hf")
    loaded_cfg = config_from_hf(read_hf_config(tmp_path / "hf"), seq_len=cfg.seq_len)
    assert loaded_cfg == cfg
    other = build_model(loaded_cfg, seed=5)
    load_hf_weights(other, tmp_path / "hf")
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    torch.testing.assert_close(other(idx), model(idx), rtol=0, atol=0)


def test_gpt2_layout_and_config(tmp_path):
    cfg = cfg_of("tiny")
    save_hf_model(cfg, build_model(cfg, seed=0).state_dict(), tmp_path / "hf")
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    d = cfg.d_model
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (d, 3 * d)  # Conv1D: (in, out)
    assert tensors["transformer.h.1.mlp.c_fc.weight"].shape == (d, 4 * d)
    assert tensors["transformer.h.1.mlp.c_proj.weight"].shape == (4 * d, d)
    assert tensors["transformer.wpe.weight"].shape == (cfg.seq_len, d)
    assert {"transformer.ln_f.weight", "transformer.h.0.ln_1.bias", "transformer.h.0.attn.c_proj.bias"} <= tensors.keys()
    assert "lm_head.weight" not in tensors  # tied: save_pretrained leaves it out
    with open(tmp_path / "hf" / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"] == {"format": "pt"}  # transformers refuses safetensors without it
    c = read_hf_config(tmp_path / "hf")
    assert c["model_type"] == "gpt2" and c["architectures"] == ["GPT2LMHeadModel"]
    assert (c["n_embd"], c["n_layer"], c["n_head"], c["n_positions"], c["vocab_size"]) == (64, 2, 4, 64, 256)
    assert c["activation_function"] == "gelu_new" and c["tie_word_embeddings"] is True


def test_llama_layout_and_config(tmp_path):
    cfg = cfg_of("tiny-llama")
    save_hf_model(cfg, build_model(cfg, seed=0).state_dict(), tmp_path / "hf")
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert tensors["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)  # 2 KV heads of 16
    assert tensors["model.layers.1.mlp.gate_proj.weight"].shape == (176, 64)
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"} <= tensors.keys()
    c = read_hf_config(tmp_path / "hf")
    assert c["model_type"] == "llama" and c["architectures"] == ["LlamaForCausalLM"]
    assert (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]) == (64, 4, 2, 176)
    assert c["rope_parameters"]["rope_theta"] == c["rope_theta"] == 10000.0 and c["hidden_act"] == "silu"


def test_loads_original_gpt2_checkpoints_and_shards(tmp_path):
    """The hub's gpt2 files: no `transformer.` prefix, causal-mask buffers; and sharded safetensors."""
    cfg = cfg_of("tiny")
    model = build_model(cfg, seed=6)
    save_hf_model(cfg, model.state_dict(), tmp_path / "hf", shard_bytes=50_000)
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    other = build_model(cfg, seed=7)
    load_hf_weights(other, tmp_path / "hf")
    assert torch.equal(other.transformer.h[1].mlp.c_fc.weight, model.transformer.h[1].mlp.c_fc.weight)

    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({k: v for k, v in hf_config(cfg).items() if k != "tie_word_embeddings"}))
    legacy = {k.removeprefix("transformer."): v for k, v in read_hf_state_dict(tmp_path / "hf").items()}
    legacy["h.0.attn.bias"] = torch.ones(1, 1, cfg.seq_len, cfg.seq_len)
    save_file(legacy, str(old / "model.safetensors"), metadata={"format": "pt"})
    third = build_model(config_from_hf(read_hf_config(old)), seed=8)
    load_hf_weights(third, old)
    assert torch.equal(third.transformer.wte.weight, model.transformer.wte.weight)


def test_mismatched_checkpoint_is_rejected(tmp_path):
    save_hf_model(cfg_of("tiny"), build_model(cfg_of("tiny"), seed=0).state_dict(), tmp_path / "hf")
    with pytest.raises(ValueError, match="shape"):
        load_hf_weights(build_model(cfg_of("tiny", dModel=128), seed=0), tmp_path / "hf")


# ----------------------------------------------------------------------------- export metadata
@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_export_loads_in_transformers_with_equal_logits_and_token_ids(preset, tmp_path):
    """transformers reads the directory as written: the same logits, the token ids we wrote (null where none,
    not GPT-2's 50256 default), generation_config.json, the source model's context length."""
    from transformers import AutoModelForCausalLM, GenerationConfig  # pinned in the test extra

    from llm_trainer.hf import SpecialTokens

    cfg = cfg_of(preset)
    model = build_model(cfg, seed=3)
    tokens = SpecialTokens(bos=1, eos=2, pad=None)
    save_hf_model(cfg, model.state_dict(), tmp_path / "hf", tokens=tokens, max_position_embeddings=4096)
    save_hf_model(cfg, model.state_dict(), tmp_path / "none")  # no special tokens: null, deliberately

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.eval()(ids)
        theirs = hf(ids).logits
    assert ours.shape == theirs.shape and (ours - theirs).abs().max().item() < 1e-5
    assert (hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id) == (1, 2, None)
    generation = GenerationConfig.from_pretrained(tmp_path / "hf")
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, None)
    if preset == "tiny-llama":
        assert hf.config.max_position_embeddings == 4096  # the fine-tuned model's context is the source's, not seqLen
    none = AutoModelForCausalLM.from_pretrained(tmp_path / "none", dtype=torch.float32)
    assert (none.config.bos_token_id, none.config.eos_token_id, none.config.pad_token_id) == (None, None, None)
    assert json.loads((tmp_path / "none" / "generation_config.json").read_text())["eos_token_id"] is None


def test_trained_special_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from llm_operator.api.v1alpha1 import LLMTrainingJobSpec
    from llm_trainer.export import source_max_positions, trained_special_tokens
    from llm_trainer.hf import SpecialTokens

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a b c"], trainers.WordLevelTrainer(special_tokens=["[UNK]", "<s>", "</s>", "<pad>"]))
    tok.save(str(tmp_path / "tok.json"))
    (tmp_path / "a.txt").write_text("a b c")
    llama = ModelConfig("llama", n_layers=1, d_model=16, n_heads=2, n_kv_heads=2, ffn_hidden=32, seq_len=16, vocab_size=32,
                        tie_embeddings=False)
    save_hf_model(llama, build_model(llama, seed=0).state_dict(), tmp_path / "hf", tokens=SpecialTokens(bos=5, eos=6, pad=40),
                  max_position_embeddings=128)

    def spec(**fields):
        return LLMTrainingJobSpec.model_validate({"image": "x", "model": {"preset": "tiny"}, **fields})

    text = {"format": "text", "paths": [str(tmp_path / "a.txt")], "tokenizer": str(tmp_path / "tok.json")}
    eos, pad = tok.token_to_id("</s>"), tok.token_to_id("<pad>")
    # text data: documents are separated by the end-of-text token, never started with <s>
    assert trained_special_tokens(spec(data=text), 256) == SpecialTokens(bos=eos, eos=eos, pad=pad)
    # token files with their tokenizer: its own bos
    tokens_ = {"format": "tokens", "paths": [str(tmp_path / "a.txt")], "tokenizer": str(tmp_path / "tok.json")}
    assert trained_special_tokens(spec(data=tokens_), 256) == SpecialTokens(bos=tok.token_to_id("<s>"), eos=eos, pad=pad)
    assert trained_special_tokens(spec(), 256) == SpecialTokens()  # synthetic: none
    start = {"preset": None, "huggingFacePath": str(tmp_path / "hf")}
    tokens_only = {"format": "tokens", "paths": [str(tmp_path / "a.txt")]}
    # the Hugging Face start's ids; one beyond the vocabulary is no id of this model
    assert trained_special_tokens(spec(model=start, data=tokens_only), 32) == SpecialTokens(bos=5, eos=6, pad=None)
    assert source_max_positions(spec(model=start)) == 128 and source_max_positions(spec()) is None
