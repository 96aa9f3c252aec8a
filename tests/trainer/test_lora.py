"""LoRA (trainer/lora.py): adapters that PEFT loads onto the transformers model with the same logits, a frozen base with
no optimizer state, bad targets refused before a model is built, and training runs (CPU DeepSpeed, gloo) that
checkpoint, resume on another world size and evaluate with adapters."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from llm_operator.api import load_job_file
from llm_trainer import lora
from llm_trainer.engine import param_groups
from llm_trainer.hf import save_hf_model
from llm_trainer.model import ModelConfig, build_model
from llm_trainer.preflight import PreflightError, check

from trainer_testlib import write_job

pytestmark = pytest.mark.trainer

LLAMA = ModelConfig("llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, ffn_hidden=64, seq_len=32, vocab_size=64,
                    tie_embeddings=False)
GPT = ModelConfig("gpt", n_layers=2, d_model=32, n_heads=4, n_kv_heads=4, ffn_hidden=64, seq_len=32, vocab_size=64,
                  tie_embeddings=True)


def lora_spec(**changes):
    values = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["all-linear"], **changes}
    return SimpleNamespace(**values)


def hf_base(cfg: ModelConfig, path: Path) -> Path:
    save_hf_model(cfg, build_model(cfg, seed=0).state_dict(), path)
    return path


def trained_adapters(cfg: ModelConfig, spec) -> tuple[torch.nn.Module, list[str]]:
    """The base with adapters whose lora_B is not zero (as after training), so that the adapters change the logits."""
    model = build_model(cfg, seed=0)
    selected = lora.apply_lora(model, spec, seed=1)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        for name, p in model.named_parameters():
            if name.endswith("lora_B.weight"):
                p.normal_(0, 0.2)
    return model.eval(), selected


@pytest.mark.parametrize("cfg,targets", [(LLAMA, ["all-linear"]), (LLAMA, ["q_proj", "v_proj"]), (GPT, ["all-linear"]),
                                         (GPT, ["c_attn"])], ids=["llama-all-linear", "llama-q-v", "gpt2-all-linear", "gpt2-c_attn"])
def test_adapter_loads_in_peft_with_the_same_logits(tmp_path, cfg, targets):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    spec = lora_spec(target_modules=targets)
    base = hf_base(cfg, tmp_path / "base")
    model, selected = trained_adapters(cfg, spec)
    out = lora.export_adapter(cfg, model.state_dict(), tmp_path / "model", spec, selected, base_model=str(base), merge=True)

    keys = load_file(str(out / lora.ADAPTER_WEIGHTS)).keys()
    assert {k.removeprefix(lora.PEFT_PREFIX).rsplit(".lora_", 1)[0] for k in keys} == set(selected)
    assert all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(idx)
        hf = transformers.AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
        plain = hf(idx).logits
        peft_model = peft.PeftModel.from_pretrained(hf, out).eval()
        adapted = peft_model(idx).logits
        merged = transformers.AutoModelForCausalLM.from_pretrained(out / lora.MERGED, torch_dtype=torch.float32)(idx).logits
    assert (ours - plain).abs().max() > 1e-2  # the adapters matter: an adapter PEFT ignored would fail below
    torch.testing.assert_close(adapted, ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged, ours, atol=1e-5, rtol=0)


def test_only_the_adapters_are_trainable_and_reach_the_optimizer():
    model = build_model(LLAMA, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    selected = lora.apply_lora(model, lora_spec(target_modules=["q_proj", "down_proj"]), seed=1)
    assert selected == ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj",
                        "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{ab}.weight" for m in selected for ab in "AB"}
    optimized = {id(p) for group in param_groups(model, 0.1) for p in group["params"]}
    assert optimized == {id(p) for n, p in model.named_parameters() if n in trainable}
    assert lora.trainable_parameters(model) == 2 * ((4 * 32 + 32 * 4) + (4 * 64 + 32 * 4))  # 2 layers; q: 32→32, down: 64→32
    base, _ = lora.split_state(model.state_dict())
    assert base.keys() == before.keys() and all(torch.equal(base[k], before[k]) for k in before)  # same keys: hf.py applies
    idx = torch.randint(0, LLAMA.vocab_size, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), build_model(LLAMA, seed=0)(idx), atol=0, rtol=0)  # lora_B = 0: the base


@pytest.mark.parametrize("targets,message", [
    (["qproj"], "training.lora.targetModules: 'qproj' matches no linear layer of the model (its linear layers are named "
                "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj; or use all-linear)"),
    (["q_proj", "attn.c_attn"], "'attn.c_attn' matches no linear layer"),
    (["all-linear", "q_proj"], "all-linear stands alone"),
])
def test_targets_that_match_nothing_are_refused(targets, message):
    with pytest.raises(ValueError) as info:
        lora.check_targets(LLAMA, targets)
    assert str(info.value).startswith("training.lora.targetModules: ") and message in str(info.value)


def test_an_adapter_on_a_tied_head_is_refused():
    with pytest.raises(ValueError, match="training.lora.targetModules: lm_head shares its weight with the token embedding"):
        lora.check_targets(GPT, ["lm_head"])


def test_validate_names_the_field_and_the_model_before_building_one(tmp_path, monkeypatch):
    base = hf_base(LLAMA, tmp_path / "base")
    job = write_job(tmp_path, {"spec": {"model": {"preset": None, "huggingFacePath": str(base)},
                                        "training": {"lora": {"targetModules": ["q_proj", "query"]}}}})
    monkeypatch.setattr("llm_trainer.model.build_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(PreflightError) as info:
        check(load_job_file(str(job)).spec)
    assert info.value.problems == [f"training.lora.targetModules: 'query' matches no linear layer of the model (its linear layers "
                                   f"are named down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj; or use "
                                   f"all-linear) ({base / 'config.json'})"]
