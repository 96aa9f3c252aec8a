"""LoRA (trainer/lora.py): adapters that PEFT loads onto the transformers model with the same logits, a frozen base with
no optimizer state, bad targets refused before a model is built, and training runs (CPU DeepSpeed, gloo) that
checkpoint, resume on another world size and evaluate with adapters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llm_operator.api import load_job_file
from llm_trainer import lora
from llm_trainer.early_stopping import best_evaluation, should_stop
from llm_trainer.engine import param_groups
from llm_trainer.hf import save_hf_model
from llm_trainer.model import ModelConfig, build_model
from llm_trainer.preflight import PreflightError, check

from trainer_testlib import run_ranks, write_job

pytestmark = pytest.mark.trainer

LLAMA = ModelConfig("llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, ffn_hidden=64, seq_len=32, vocab_size=64,
                    tie_embeddings=False)
QWEN2 = ModelConfig("qwen2", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, ffn_hidden=64, seq_len=32, vocab_size=64,
                    tie_embeddings=True, qkv_bias=True)  # biased q/k/v under the adapters, tied head (Qwen2.5-0.5B)
QWEN3 = ModelConfig("qwen3", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, ffn_hidden=64, seq_len=32, vocab_size=64,
                    tie_embeddings=False, qk_norm=True, head_dim_override=16)
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
                                         (GPT, ["c_attn"]), (QWEN2, ["all-linear"]), (QWEN3, ["all-linear"])],
                         ids=["llama-all-linear", "llama-q-v", "gpt2-all-linear", "gpt2-c_attn", "qwen2-all-linear", "qwen3-all-linear"])
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


# ------------------------------------------------------------------------------ training runs (2 CPU ranks)
RUN_MODEL = ModelConfig("llama", n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, ffn_hidden=64, seq_len=32, vocab_size=256,
                        tie_embeddings=False)
RESIZE_REL = 1e-5  # as test_trainer_resize.py: another grouping of the same global batch, float32 rounding only
# The evaluations right after a resize: LoRA under Adam turns float32 rounding (1e-7) into ~1e-3 of held-out loss within
# ten steps, ~1e-6 within the two after the resume; the old indexing (evalSteps × micro × ranks samples, half of them on
# 1 rank) was off by more than this
RESIZED_EVAL_ABS = 2e-4

# lora_job's run: the held-out loss rises from the first evaluation (tokens the run never trains on), so the first is
# the best and, with patience 1, the second stops the run, each by a margin of 0.05 or more (5.557 at step 4, 5.610 at 8
# on the development VM) against the thousandths that float rounding moves it by
PATIENCE, MIN_DELTA = 1, 0.05
BEST_STEP, STOP_STEP = 4, 8
CLEAR_MARGIN = 0.02  # of the rise from the best to the stop: twenty times the rounding's 1e-3


def lora_job(d: Path) -> Path:
    """LoRA on a tiny Llama, trained on token ids 0-127 and evaluated every 4 steps on ids 128-255: the model learns to
    expect the lower half of the vocabulary, so the held-out loss rises clearly from ln 256 instead of drifting by float
    noise. earlyStopping (patience 1) ends the run at the second evaluation, and the first one's adapters are the model."""
    base = d / "base"
    if not base.exists():
        hf_base(RUN_MODEL, base)
    rng = np.random.default_rng(0)
    train, held_out = d / "train.bin", d / "held-out.bin"
    rng.integers(0, 128, (RUN_MODEL.seq_len + 1) * 256).astype(np.uint16).tofile(train)
    rng.integers(128, 256, (RUN_MODEL.seq_len + 1) * 64).astype(np.uint16).tofile(held_out)
    return write_job(d, {"spec": {"model": {"preset": None, "huggingFacePath": str(base)},
                                  "data": {"format": "tokens", "paths": [str(train)], "validation": {"paths": [str(held_out)]}},
                                  "training": {"steps": 16, "evalIntervalSteps": 4, "evalSteps": 2, "lora": {"rank": 4, "alpha": 8},
                                               "learningRate": 0.05, "earlyStopping": {"patience": PATIENCE, "minDelta": MIN_DELTA}},
                                  "export": {"mergeLora": True}, "checkpoint": {"intervalSteps": 4, "keep": 1}}})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    run = run_ranks(lora_job(d), d / "out")
    assert run.codes == [0, 0], run.log_tail()
    return run


def adapter_tensors(tag_dir: Path) -> dict[str, torch.Tensor]:
    module = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    return {lora.PEFT_PREFIX + k: v for k, v in lora.split_state(module)[1].items()}


def test_the_lora_runs_early_stop_is_decided_by_a_clear_margin(lora_run):
    """The rules (llm_trainer.early_stopping) on the run's evaluations stop at STOP_STEP with BEST_STEP the best, by far
    more than float rounding moves the losses: the constants the tests below assert hold on any CPU."""
    history = lora_run.summary["eval_losses"]
    losses = {e["step"]: e["loss"] for e in history}
    assert sorted(losses) == [BEST_STEP, STOP_STEP], history
    rise = losses[STOP_STEP] - losses[BEST_STEP]  # > 0: the first evaluation is the best; > -minDelta: the second stops
    assert rise > CLEAR_MARGIN, history
    assert should_stop(history, PATIENCE, MIN_DELTA)
    best = best_evaluation(history)
    assert best is not None and best.step == BEST_STEP


def test_an_early_stopped_run_exports_its_best_evaluation_and_keeps_its_checkpoint(lora_run):
    summary = lora_run.summary
    evaluations = {e["step"]: e["loss"] for e in summary["eval_losses"]}
    assert sorted(evaluations) == list(range(4, STOP_STEP + 1, 4))  # no evaluation after the stop
    assert (summary["steps"], summary["total_steps"], summary["stop_reason"]) == (STOP_STEP, 16, "EarlyStopped")
    assert (summary["best_eval_step"], summary["best_eval_loss"], summary["best_checkpoint"]) == \
        (BEST_STEP, evaluations[BEST_STEP], f"global_step{BEST_STEP}")
    final = json.loads((lora_run.out / "markers" / "final.json").read_text())  # → the pod's termination message
    assert (final["stopReason"], final["bestEvalStep"], final["bestEvalLoss"], final["step"]) == \
        ("EarlyStopped", BEST_STEP, evaluations[BEST_STEP], STOP_STEP)
    checkpoints = lora_run.out / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("global_step*")) == [f"global_step{BEST_STEP}", f"global_step{STOP_STEP}"]
    exported = load_file(str(Path(summary["model"]) / lora.ADAPTER_WEIGHTS))  # keep 1, and the best
    best, last = adapter_tensors(checkpoints / f"global_step{BEST_STEP}"), adapter_tensors(checkpoints / f"global_step{STOP_STEP}")
    assert exported.keys() == best.keys()
    assert all(torch.equal(exported[k], best[k]) for k in best)
    assert any(not torch.equal(exported[k], last[k]) for k in last)


def test_a_run_restarted_after_its_early_stop_stays_stopped(lora_run, tmp_path):
    """The early-stopped run's output run again (as a gang restarted after the stop, or the job run again): it resumes
    from the stop's checkpoint, whose evaluation history already says stop, and ends there as before, training nothing."""
    out = tmp_path / "out"
    shutil.copytree(lora_run.out, out)
    job = lora_run.out.parent / "job.yaml"
    again = run_ranks(job, out)
    assert again.codes == [0, 0], again.log_tail()
    summary = again.summary
    assert summary["resumed_from"] == f"global_step{STOP_STEP}" and summary["losses"] == []  # no step trained
    assert (summary["steps"], summary["stop_reason"], summary["best_eval_step"]) == (STOP_STEP, "EarlyStopped", BEST_STEP)
    assert summary["eval_losses"] == lora_run.summary["eval_losses"]
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("global_step*")) == [f"global_step{BEST_STEP}", f"global_step{STOP_STEP}"]
    exported = load_file(str(Path(summary["model"]) / lora.ADAPTER_WEIGHTS))
    best = adapter_tensors(checkpoints / f"global_step{BEST_STEP}")
    assert exported.keys() == best.keys() and all(torch.equal(exported[k], best[k]) for k in best)


def test_a_lora_run_resumes_on_another_world_size(lora_run, tmp_path):
    """Stopped at step 6 on 2 ranks, resumed on 1 (a universal checkpoint of the adapters' optimizer shards): the same
    losses, the same evaluations (the same held-out samples on 1 rank as on 2) and the same early stop as the
    uninterrupted run."""
    job = lora_job(tmp_path)
    first = run_ranks(job, tmp_path / "out", world=2, args=("--stop-at-step", "6"))
    assert first.codes == [0, 0], first.log_tail()
    second = run_ranks(job, tmp_path / "out", world=1)
    assert second.codes == [0], second.log_tail()
    assert second.summary["resumed_from"] == "global_step6" and "written by 2 data-parallel ranks" in second.summary["resized"]
    expected = lora_run.losses
    assert sorted(second.losses) == list(range(7, STOP_STEP + 1))
    for step, loss in second.losses.items():
        assert loss == pytest.approx(expected[step], rel=RESIZE_REL), f"step {step}: {loss} vs uninterrupted {expected[step]}"
    uninterrupted = {e["step"]: e["loss"] for e in lora_run.summary["eval_losses"]}
    resumed = {e["step"]: e["loss"] for e in second.summary["eval_losses"]}
    assert resumed[BEST_STEP] == pytest.approx(uninterrupted[BEST_STEP], rel=RESIZE_REL)  # from the checkpoint (2 ranks)
    assert resumed[STOP_STEP] == pytest.approx(uninterrupted[STOP_STEP], abs=RESIZED_EVAL_ABS), "the evaluation after the resize"
    assert (second.summary["stop_reason"], second.summary["steps"], second.summary["best_eval_step"]) == \
        ("EarlyStopped", STOP_STEP, BEST_STEP)


def test_a_lora_run_exports_an_adapter_peft_loads_with_the_trained_logits(lora_run):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model_dir = Path(lora_run.summary["model"])
    config = json.loads((model_dir / lora.ADAPTER_CONFIG).read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 8.0, "LORA")
    base = Path(config["base_model_name_or_path"])
    idx = torch.randint(0, RUN_MODEL.vocab_size, (2, RUN_MODEL.seq_len), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        hf = transformers.AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
        plain = hf(idx).logits
        adapted = peft.PeftModel.from_pretrained(hf, model_dir).eval()(idx).logits
        merged = transformers.AutoModelForCausalLM.from_pretrained(model_dir / lora.MERGED, torch_dtype=torch.float32)(idx).logits
    assert (adapted - plain).abs().max() > 1e-3  # training moved the adapters
    torch.testing.assert_close(adapted, merged, atol=1e-5, rtol=0)


def test_a_lora_run_trains_only_the_adapters(lora_run):
    """The base weights in the checkpoint are the source's, bit for bit; the optimizer holds the adapters' state only."""
    adapters = 2 * sum(4 * (i + o) for i, o in ((32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)))
    assert lora_run.summary["trainable_parameters"] == adapters
    tag = lora_run.out / "checkpoints" / lora_run.summary["tag"]
    module = torch.load(tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    source = load_file(str(Path(json.loads((Path(lora_run.summary["model"]) / lora.ADAPTER_CONFIG).read_text())["base_model_name_or_path"])
                           / "model.safetensors"))
    base, trained = lora.split_state(module)
    assert base.keys() == source.keys() and all(torch.equal(base[k], source[k]) for k in source)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in trained.items())  # they trained
    optimizer_elements = 0
    for shard in sorted(tag.glob("*zero_pp_rank_*_optim_states.pt")):
        state = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        optimizer_elements += sum(t.numel() for t in state["single_partition_of_fp32_groups"])
    assert adapters <= optimizer_elements < adapters + 64  # ZeRO pads each rank's partition; a frozen base would add 40k


@pytest.mark.parametrize("stage", [0, 2])
def test_lora_trains_under_zero_stage(stage, tmp_path):
    """ZeRO 0 and 2 (ZeRO 1 is lora_run's): the adapters train, the base stays, PEFT loads the export onto the source."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    base = hf_base(RUN_MODEL, tmp_path / "base")
    job = write_job(tmp_path, {"spec": {"model": {"preset": None, "huggingFacePath": str(base)},
                                        "training": {"steps": 3, "zeroStage": stage, "lora": {"rank": 2, "targetModules": ["q_proj", "v_proj"]}},
                                        "export": {"mergeLora": True}, "checkpoint": {"intervalSteps": 0}}})
    run = run_ranks(job, tmp_path / "out")
    assert run.codes == [0, 0], run.log_tail()
    assert run.summary["trainable_parameters"] == 2 * (2 * (32 + 32) + 2 * (32 + 16))
    model_dir = Path(run.summary["model"])
    idx = torch.randint(0, RUN_MODEL.vocab_size, (1, RUN_MODEL.seq_len), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        hf = transformers.AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
        plain = hf(idx).logits
        adapted = peft.PeftModel.from_pretrained(hf, model_dir).eval()(idx).logits
        merged = transformers.AutoModelForCausalLM.from_pretrained(model_dir / lora.MERGED, torch_dtype=torch.float32)(idx).logits
    assert (adapted - plain).abs().max() > 1e-4
    torch.testing.assert_close(adapted, merged, atol=1e-5, rtol=0)
    merged_weights = load_file(str(model_dir / lora.MERGED / "model.safetensors"))
    source = load_file(str(base / "model.safetensors"))
    changed = {k for k in source if not torch.equal(merged_weights[k], source[k])}
    assert changed == {f"model.layers.{i}.self_attn.{p}.weight" for i in range(2) for p in ("q_proj", "v_proj")}
