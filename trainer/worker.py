"""One rank of a training job: `python -m llm_trainer.worker --job JOB.yaml --output-dir DIR`.

Started by DeepSpeed's launcher (which adds --local_rank and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), either by `llm-train run` on one machine or by `llm-train launch` in every worker pod.

The loop, in Trainer.run():  setup -> resume -> [train_step -> log -> checkpoint -> stop?]* -> finish.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from llm_operator.api import load_job_file
from llm_operator.api.deepspeed_config import build_deepspeed_config
from llm_operator.api.contract import FINAL_SCRAPE_ENV, RESTART_ENV
from llm_operator.api.v1alpha1 import SFT_FORMATS, LLMTrainingJob, LLMTrainingJobSpec, check_pipeline_layers

from . import markers, preflight
from .checkpoint import COMPLETE, CheckpointManager, Preemption, tag_for
from .data import Loader, Source, build_loader
from .engine import Dist, build_engine, init_distributed
from .export import copy_tokenizer, source_max_positions, trained_special_tokens
from .evaluation import Evaluation, build_sources, eval_batches, evaluate, perplexity
from .gradnorm import module_grad_norm
from .hf import load_hf_config, load_hf_weights, save_hf_model
from .metrics import Metrics, Progress, log_json, metrics_port, peak_flops
from .shm import release_allreduce_buffers
from .model import ModelConfig, build_model, count_params, flops_per_token
from . import pipeline
from .sft.dataset import SFTSource
from .sft.evaluation import SFTEvaluation, sft_eval_batches
from .sft.loader import SFTLoader, build_sft_loader, sft_sources
from .sft.loss import micro_batch_loss
from . import lora as lora_adapters
from .early_stopping import EARLY_STOPPED, best_evaluation, should_stop

SUMMARY = "summary.json"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llm_trainer.worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", required=True, help="LLMTrainingJob manifest (in the cluster: /etc/llmtraining/job.yaml)")
    p.add_argument("--output-dir", required=True, help="progress.json, summary.json, markers/, model/, data cache")
    p.add_argument("--checkpoint-dir", help="checkpoints (default: <output-dir>/checkpoints)")
    p.add_argument("--deepspeed-config", help="use this rendered DeepSpeed config (ds_config.json) instead of building it")
    p.add_argument("--export-dir", help="final model as a Hugging Face directory (default: <output-dir>/model)")
    p.add_argument("--stop-at-step", type=int, help="save a checkpoint and stop (like SIGTERM) after this step")
    p.add_argument("--progress", action="store_true", help="tqdm progress bar on rank 0 (stderr)")
    p.add_argument("--step-events", action="store_true", help='{"event": "step"} line per step on rank 0 (llm-train run\'s bar)')
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # from deepspeed
    return p.parse_args(argv)


def effective_accelerator(spec: LLMTrainingJobSpec) -> str:
    """cpu if the spec says so or DS_ACCELERATOR=cpu; gpu needs CUDA."""
    if spec.accelerator == "cpu" or os.environ.get("DS_ACCELERATOR") == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("spec.accelerator is gpu but CUDA is not available (set DS_ACCELERATOR=cpu to run on CPU)")
    return "gpu"


def fit_to_world(spec: LLMTrainingJobSpec, world_size: int) -> LLMTrainingJobSpec:
    """Same global batch on a different number of ranks (a local run with --ranks): more or fewer accumulation steps."""
    if world_size == spec.world_size:
        return spec
    _, _, global_batch = spec.batch_plan()
    training = spec.training.model_copy(update={"global_batch_size": global_batch})
    fitted = spec.model_copy(update={"nodes": 1, "slots_per_node": world_size, "training": training})
    try:
        fitted.batch_plan()
    except ValueError as exc:
        raise ValueError(f"cannot run the job on {world_size} ranks instead of nodes × slotsPerNode = "
                         f"{spec.world_size}: {exc}") from None
    return fitted


def model_config(spec: LLMTrainingJobSpec) -> ModelConfig:
    m, ckpt = spec.model_spec, spec.training.activation_checkpointing
    if m.hugging_face_path:
        return load_hf_config(m.hugging_face_path, seq_len=m.seq_len, activation_checkpointing=ckpt)
    return ModelConfig.from_resolved(m.resolved(), activation_checkpointing=ckpt)


class Trainer:
    def __init__(self, job: LLMTrainingJob, args: argparse.Namespace, dist: Dist, spec: LLMTrainingJobSpec):
        self.job, self.args, self.dist, self.spec = job, args, dist, spec
        self.t = spec.training
        self.out = Path(args.output_dir)
        self.total = self.t.steps
        self.step = 0
        self.initial_loss: Optional[float] = None
        self.resumed_from: Optional[str] = None
        self.last_checkpoint: Optional[dict[str, Any]] = None
        self.history: list[dict[str, Any]] = []
        self.last_logged: dict[str, Any] = {}  # loss, lr, grad_norm of the last log step (kept in checkpoints)
        self.outcome: Optional[str] = None  # complete | preempted, once training ended
        self.final_tokens_per_second: Optional[float] = None
        self.own_grad_norm: Optional[torch.Tensor] = None  # ZeRO 0: the step's gradient norm, taken before DeepSpeed clears it
        self.resized: Optional[str] = None  # resumed through a universal checkpoint on another data-parallel size
        self.stop_reason: Optional[str] = None  # EarlyStopped: the held-out loss stopped improving (training.earlyStopping)
        self.lora_targets: list[str] = []  # module names with adapters (training.lora)

    # ------------------------------------------------------------------------------------- setup
    def barrier(self) -> None:
        torch.distributed.barrier()

    def setup(self) -> None:
        d, spec, t = self.dist, self.spec, self.t
        self.marker_dir = markers.marker_dir(self.out)
        if d.is_node_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.marker_dir.mkdir(parents=True, exist_ok=True)
            markers.clear(self.marker_dir)
        torch.manual_seed(t.seed)

        self.cfg = model_config(spec)
        # the data first: a bad row or template fails here, before any model is built
        self.micro, self.accumulation, self.global_batch = spec.batch_plan()
        self.sft = spec.data.format in SFT_FORMATS
        source: Source
        held_out: Optional[Source]
        if self.sft:
            source, held_out = sft_sources(spec, self.cfg.seq_len, self.out / "data-cache", tokenize_here=d.is_node_main, barrier=self.barrier)
        else:
            source, held_out = build_sources(spec.data, self.cfg.vocab_size, self.cfg.seq_len, t.seed, self.out / "data-cache",
                                             tokenize_here=d.is_node_main, barrier=self.barrier)
        # with pipeline stages the whole model is built in host memory and each rank keeps only its stage on the device
        model = build_model(self.cfg, seed=t.seed, device="cpu" if t.pipeline_stages > 1 else d.device)
        if spec.model_spec.hugging_face_path:
            load_hf_weights(model, spec.model_spec.hugging_face_path)
        if t.lora is not None:  # the base frozen, adapters on the targets: only they reach the optimizer
            self.lora_targets = lora_adapters.apply_lora(model, t.lora, seed=t.seed)
        self.trainable_parameters = lora_adapters.trainable_parameters(model)
        self.stages = t.pipeline_stages
        if self.stages > 1:  # this rank's stage of the same weights (pipeline.py)
            check_pipeline_layers(self.cfg.n_layers, self.stages, t.pipeline_partition)
            model = pipeline.build_pipeline_model(self.cfg, self.stages, t.pipeline_partition, model)
        if self.args.deepspeed_config:
            self.ds_config = json.loads(Path(self.args.deepspeed_config).read_text())
        else:
            self.ds_config = build_deepspeed_config(spec)
        self.engine, self.scheduler = build_engine(model, self.ds_config, t, d)
        if self.stages > 1 and not self.engine.zero_optimization():
            pipeline.count_tied_weights_once(self.engine)
        self.tokens_per_step = self.global_batch * self.cfg.seq_len

        dp_rank, dp_size = pipeline.data_parallel_rank_and_size(self.engine, d)
        self.dp_size = dp_size
        self.evaluation: Optional[Any] = None
        if self.sft and held_out is not None and t.eval_interval_steps:
            assert isinstance(held_out, SFTSource)
            self.evaluation = SFTEvaluation(sft_eval_batches(held_out, t.eval_steps, dp_rank, dp_size, self.micro, self.accumulation,
                                                             self.cfg.vocab_size),
                                            d.device, spec.data.packing, data_parallel=dp_size)
        elif held_out is not None and t.eval_interval_steps:
            # evalSteps global batches, split like the training batch: the same samples on any number of ranks
            self.evaluation = Evaluation(eval_batches(held_out, t.eval_steps, dp_rank, dp_size, self.micro, self.accumulation,
                                                      self.cfg.vocab_size),
                                         d.world_size, d.device, pipeline.evaluate if self.stages > 1 else evaluate,
                                         data_parallel=dp_size)
        self.eval_history: list[dict[str, Any]] = []
        self.loader: Loader
        if self.sft:
            assert isinstance(source, SFTSource)
            self.loader = build_sft_loader(source, seed=t.seed, rank=dp_rank, world_size=dp_size, micro_batch=self.micro,
                                           device=d.device, vocab_size=self.cfg.vocab_size, packing=spec.data.packing)
        else:
            self.loader = build_loader(source, seed=t.seed, rank=dp_rank, world_size=dp_size,
                                       micro_batch=self.micro, device=d.device, vocab_size=self.cfg.vocab_size)

        self.checkpoints = CheckpointManager(self.args.checkpoint_dir or self.out / "checkpoints",
                                             spec.checkpoint.keep, d.rank, self.barrier, local_rank=d.local_rank)
        self.preemption = Preemption(group=torch.distributed.new_group(backend="gloo"))

        import deepspeed

        self.flops_per_token = flops_per_token(self.cfg)
        self.peak = peak_flops(spec.monitoring.peak_tflops, d.device.type)
        info = {"job_name": self.job.metadata.name, "model": spec.model_spec.preset or spec.model_spec.hugging_face_path or self.cfg.architecture,
                "architecture": self.cfg.architecture, "parameters": str(count_params(self.cfg)),
                "world_size": str(d.world_size), "deepspeed_version": deepspeed.__version__,
                "torch_version": torch.__version__, "zero_stage": str(self.ds_config["zero_optimization"]["stage"]),
                "precision": t.precision}
        self.metrics = Metrics(metrics_port(spec.monitoring.port) if d.is_node_main else None, info)
        self.metrics.total_steps.set(self.total)
        if os.environ.get(RESTART_ENV, "").isdigit():
            self.metrics.gang_restarts.set(int(os.environ[RESTART_ENV]))
        self.progress = Progress(self.out, self.total) if d.is_node_main else None
        self.bar = None
        if self.args.progress and d.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.job.metadata.name, unit="step", dynamic_ncols=True)
        if d.is_main:
            log_json({"event": "start", "job": self.job.metadata.name, "world_size": d.world_size,
                      "parameters": count_params(self.cfg), "trainable_parameters": self.trainable_parameters,
                      "flops_per_token": self.flops_per_token,
                      "micro_batch": self.micro, "accumulation": self.accumulation, "global_batch": self.global_batch,
                      "seq_len": self.cfg.seq_len, "zero_stage": info["zero_stage"], "precision": t.precision,
                      "pipeline_stages": self.stages, "data_parallel": dp_size,
                      "device": str(d.device), "eval_samples": self.evaluation.samples if self.evaluation else None})

    # ------------------------------------------------------------------------------------ resume
    def resume(self) -> None:
        self.checkpoints.remove_incomplete()
        tag = self.checkpoints.resolve(self.spec.checkpoint.resume)
        tags = [None] * self.dist.world_size
        torch.distributed.all_gather_object(tags, tag)
        if len(set(tags)) != 1:
            raise RuntimeError(f"ranks disagree on the checkpoint to resume from: {tags} (is {self.checkpoints.dir} shared?)")
        if tag is not None:
            state = self.checkpoints.load(self.engine, tag, notify=self.note_resize)
            self.step = state["step"]
            self.loader.load_state_dict(state["data"])
            self.initial_loss = state.get("initial_loss")
            self.resumed_from = tag
            self.last_checkpoint = self.checkpoint_status(tag)
            self.metrics.checkpoint_done(self.step, self.checkpoint_time(tag))
            self.metrics.resumed_step.set(self.step)
            if self.progress:  # progress.json names the checkpoint from the start, not from the next one
                self.progress.update(step=self.step, lastCheckpoint=self.last_checkpoint)
            self.last_logged = state.get("last_logged") or {}
            for gauge, key in ((self.metrics.loss, "loss"), (self.metrics.learning_rate, "lr"), (self.metrics.grad_norm, "grad_norm"),
                               (self.metrics.eval_loss, "eval_loss"), (self.metrics.eval_perplexity, "eval_perplexity")):
                gauge.set(self.last_logged.get(key))  # true of the checkpoint's step; throughput waits for a measurement
            self.eval_history = state.get("eval_history") or []
            self.publish_best()
            if self.dist.is_main:
                log_json({"event": "resume", "tag": tag, "step": self.step})
        self.metrics.step.set(self.step)
        self.metrics.trained_tokens.set(self.step * self.tokens_per_step)
        if self.bar is not None:
            self.bar.update(self.step)
        self.interval_loss = torch.zeros((), device=self.dist.device)
        self.interval_steps = 0
        self.interval_start = self.run_start = time.perf_counter()
        self.first_step_done: Optional[float] = None
        self.start_step = self.step

    def note_resize(self, message: str) -> None:
        """A resume through a universal checkpoint: a log line now, and the run's final state and summary later."""
        self.resized = message
        if self.dist.is_main:
            log_json({"event": "resume-resized", "message": message})

    # ------------------------------------------------------------------------------------- steps
    def train_step(self) -> None:
        """One optimizer step: forward/backward over the accumulation micro-batches. No host sync."""
        started = time.perf_counter()
        self.last_lr = self.scheduler.get_last_lr()[0] if self.scheduler is not None else None  # this step's LR
        if self.stages > 1:  # DeepSpeed's pipeline schedule runs the micro-batches; the loss comes from the last stage
            self.interval_loss += pipeline.train_batch(self.engine, self.loader, self.accumulation).detach()
        elif self.sft:
            self.interval_loss += self.sft_step()
        else:
            self.interval_loss += self.data_parallel_step()
        self.interval_steps += 1
        self.step += 1
        self.metrics.step_time.observe(time.perf_counter() - started)
        self.metrics.step_done(self.step, self.tokens_per_step)
        if self.first_step_done is None:
            self.first_step_done = time.perf_counter()
        if self.bar is not None:
            self.bar.update(1)
        if self.args.step_events and self.dist.is_main:
            log_json({"event": "step", "step": self.step})

    def data_parallel_step(self) -> torch.Tensor:
        """The micro-batches of one optimizer step, forward and backward on this rank; their mean loss."""
        loss_sum = torch.zeros((), device=self.dist.device)
        own_norm = self.log_due(self.step + 1) and self.ds_config["zero_optimization"]["stage"] == 0
        for micro_step in range(self.accumulation):
            inputs, targets = next(self.loader)
            loss = self.engine(inputs, targets)
            self.engine.backward(loss)
            if own_norm and micro_step == self.accumulation - 1:
                self.own_grad_norm = module_grad_norm(self.engine.module)  # DeepSpeed keeps none with ZeRO 0 (gradnorm.py)
            self.engine.step()  # applies the optimizer (and LR schedule) at the accumulation boundary
            loss_sum += loss.detach()
        return loss_sum / self.accumulation

    def sft_step(self) -> torch.Tensor:
        """data_parallel_step with the loss of sft/loss.py: every target token of the step weighs the same, on every rank."""
        loader = self.loader
        assert isinstance(loader, SFTLoader)
        targets = loader.global_target_count(self.accumulation)
        loss_sum = torch.zeros((), device=self.dist.device)
        own_norm = self.log_due(self.step + 1) and self.ds_config["zero_optimization"]["stage"] == 0
        for micro_step in range(self.accumulation):
            batch = loader.next_micro_batch()
            summed = self.engine(batch.inputs, batch.targets, reduction="sum", **batch.model_kwargs())
            loss = micro_batch_loss(summed, targets, self.accumulation, self.dp_size)
            self.engine.backward(loss)
            if own_norm and micro_step == self.accumulation - 1:
                self.own_grad_norm = module_grad_norm(self.engine.module)
            self.engine.step()
            loss_sum += loss.detach()
        return loss_sum / self.accumulation  # log() sums the ranks and divides by their number: the step's token mean

    def log_due(self, step: int) -> bool:
        return step == 1 or step % self.t.log_interval_steps == 0 or step == self.total

    def log(self) -> None:
        """At step 1, every logIntervalSteps and the last step: all-reduce loss and memory, publish."""
        if not self.log_due(self.step):
            return
        dist = torch.distributed
        summed = self.interval_loss / self.interval_steps
        dist.all_reduce(summed)
        loss = summed.item() / self.dist.world_size
        memory = torch.tensor(float(torch.cuda.max_memory_allocated() if self.dist.device.type == "cuda" else 0),
                              device=self.dist.device)
        dist.all_reduce(memory, op=dist.ReduceOp.MAX)
        now = time.perf_counter()
        tokens_per_second = self.interval_steps * self.tokens_per_step / (now - self.interval_start)
        mfu = tokens_per_second * self.flops_per_token / (self.peak * self.dist.world_size) if self.peak else None
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            norm, self.own_grad_norm = self.own_grad_norm, None
        grad_norm = float(norm) if norm is not None else None
        lr = self.last_lr
        if self.initial_loss is None:
            self.initial_loss = loss
        record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                  "tokens_per_second": tokens_per_second, "step_time": (now - self.interval_start) / self.interval_steps,
                  "mfu": mfu, "memory_bytes": int(memory.item())}
        self.history.append({"step": self.step, "loss": loss})
        self.interval_loss.zero_()
        self.interval_steps, self.interval_start = 0, time.perf_counter()

        self.last_logged.update(loss=loss, lr=lr, grad_norm=grad_norm)
        m = self.metrics
        m.loss.set(loss)
        m.tokens_per_second.set(tokens_per_second)
        m.gpu_memory_bytes.set(record["memory_bytes"])
        m.learning_rate.set(lr)
        m.grad_norm.set(grad_norm)
        m.mfu.set(mfu)  # None (absent) where the accelerator's peak is unknown
        if self.progress:
            self.progress.update(step=self.step, loss=loss, tokensPerSecond=tokens_per_second, mfu=mfu)
        if self.dist.is_main:
            log_json(record, self.bar)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def evaluation_due(self) -> bool:
        every = self.t.eval_interval_steps
        return self.evaluation is not None and (self.step % every == 0 or self.step == self.total)

    def evaluate(self) -> None:
        """The held-out loss (all ranks), published like the training loss."""
        assert self.evaluation is not None
        started = time.perf_counter()
        eval_loss = self.evaluation.run(self.engine)
        eval_perplexity = perplexity(eval_loss)
        self.last_logged.update(eval_loss=eval_loss, eval_perplexity=eval_perplexity)
        self.eval_history.append({"step": self.step, "loss": eval_loss, "perplexity": eval_perplexity})
        self.metrics.eval_loss.set(eval_loss)
        self.metrics.eval_perplexity.set(eval_perplexity)
        self.publish_best()
        if self.progress:
            self.progress.update(step=self.step, evalLoss=eval_loss, evalPerplexity=eval_perplexity, **self.best_state())
        if self.dist.is_main:
            log_json({"event": "eval", "step": self.step, "eval_loss": eval_loss, "eval_perplexity": eval_perplexity,
                      "eval_samples": self.evaluation.samples, "eval_time": time.perf_counter() - started}, self.bar)
        self.interval_start += time.perf_counter() - started  # the next throughput figure is of training alone

    def after_evaluation(self) -> bool:
        """A new best evaluation gets its checkpoint (kept beside the newest `keep`, exported at the end); True when
        training.earlyStopping says the held-out loss stopped improving."""
        best = best_evaluation(self.eval_history)
        if best is not None and best.step == self.step and not (self.last_checkpoint and self.last_checkpoint["step"] == self.step):
            self.save()
        return self.early_stop_decided()

    def early_stop_decided(self) -> bool:
        """training.earlyStopping's rule on the evaluation history (a collective: every rank calls it); True sets the
        stop reason."""
        stopping = self.t.early_stopping
        if stopping is None or self.step >= self.total:
            return False
        decided = torch.tensor([int(should_stop(self.eval_history, stopping.patience, stopping.min_delta))])
        torch.distributed.broadcast(decided, src=0)  # one decision for every rank, whatever its float rounding
        if decided.item():
            self.stop_reason = EARLY_STOPPED
            if self.dist.is_main:
                best = best_evaluation(self.eval_history)
                log_json({"event": "early-stop", "step": self.step, "patience": stopping.patience, "min_delta": stopping.min_delta,
                          "best_eval_loss": best.loss if best else None, "best_eval_step": best.step if best else None}, self.bar)
        return bool(decided.item())

    def stopped_early_before(self) -> bool:
        """The resumed checkpoint's evaluation history already says stop (the gang restarted after an early stop, or the
        job ran again): the run ends as it did, instead of training past the decision."""
        return self.resumed_from is not None and self.early_stop_decided()

    def best_tag(self) -> Optional[str]:
        """The checkpoint of the best evaluation, if the run evaluated and it is complete."""
        best = best_evaluation(self.eval_history) if self.evaluation is not None else None
        if best is None or not self.checkpoints.is_complete(tag_for(best.step)):
            return None
        return tag_for(best.step)

    def checkpoint_due(self) -> bool:
        every = self.spec.checkpoint.interval_steps
        saved_here = self.last_checkpoint is not None and self.last_checkpoint["step"] == self.step  # the best evaluation's
        return every > 0 and self.step % every == 0 and self.step < self.total and not saved_here

    def stop_requested(self) -> bool:
        if self.args.stop_at_step is not None and self.step >= self.args.stop_at_step:
            return True  # every rank knows the step: no agreement needed
        return self.preemption.should_stop()

    def checkpoint_time(self, tag: str) -> float:
        """When the checkpoint was committed."""
        complete = self.checkpoints.dir / tag / COMPLETE
        return complete.stat().st_mtime if complete.exists() else time.time()

    def checkpoint_status(self, tag: str) -> dict[str, Any]:
        """The job status' lastCheckpoint."""
        return {"step": self.step, "tag": tag, "path": str(self.checkpoints.dir / tag),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.checkpoint_time(tag)))}

    def save(self) -> str:
        best = self.best_tag()
        tag = self.checkpoints.save(self.engine, self.step, {
            "step": self.step, "data": self.loader.state_dict(), "initial_loss": self.initial_loss, "last_logged": self.last_logged,
            "eval_history": self.eval_history}, protect=(best,) if best else ())
        self.last_checkpoint = self.checkpoint_status(tag)
        self.metrics.checkpoint_done(self.step, self.checkpoint_time(tag))
        if self.progress:
            self.progress.update(step=self.step, lastCheckpoint=self.last_checkpoint)
        if self.dist.is_main:
            log_json({"event": "checkpoint", **self.last_checkpoint}, self.bar)
        return tag

    def save_final(self) -> str:
        """A checkpoint of the current step, unless the last one is it (same decision on every rank)."""
        self.preemption.drain()
        if self.last_checkpoint and self.last_checkpoint["step"] == self.step:
            return self.last_checkpoint["tag"]
        return self.save()

    # ----------------------------------------------------------------------------------- endings
    def preempt(self) -> int:
        reason = self.preemption.requested or ("stop-at-step" if self.args.stop_at_step is not None else "peer")
        tag = self.save_final()  # ends with a barrier: every rank's state is on disk
        self.end("preempted", tag)
        if self.dist.is_node_main:
            markers.write(self.marker_dir, markers.PREEMPTED, {"step": self.step, "tag": tag, "reason": reason})
        if self.dist.is_main:
            log_json({"event": "preempted", "step": self.step, "tag": tag, "reason": reason})
            self.write_summary(tag, model_dir=None)
        return 0

    def export(self) -> Optional[Path]:
        """The trained weights as a Hugging Face model directory (rank 0 writes)."""
        engine = self.engine
        state: Optional[Mapping[str, torch.Tensor]]
        if self.stages > 1:
            state = pipeline.gather_decoder_state(engine, self.cfg, self.dist.is_main)  # collective
        elif engine.zero_optimization_partition_weights():
            state = engine._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0
        else:
            state = engine.module.state_dict() if self.dist.is_main else None
        path = None
        if self.dist.is_main:
            assert state is not None
            target = self.args.export_dir or self.out / "model"
            tokens = trained_special_tokens(self.spec, self.cfg.vocab_size)
            if self.t.lora is not None:  # a PEFT adapter for the source model, and with export.mergeLora the merged model
                path = lora_adapters.export_adapter(self.cfg, state, target, self.t.lora, self.lora_targets,
                                                    base_model=self.spec.model_spec.hugging_face_path, merge=self.spec.export.merge_lora,
                                                    tokens=tokens, max_position_embeddings=source_max_positions(self.spec))
                copy_tokenizer(self.spec, path)
                if self.spec.export.merge_lora:
                    copy_tokenizer(self.spec, path / lora_adapters.MERGED)
                return path
            path = save_hf_model(self.cfg, state, target, tokens=tokens,
                                 max_position_embeddings=source_max_positions(self.spec))
            copy_tokenizer(self.spec, path)  # so that the exported directory can be used as is
        return path

    def finish(self) -> int:
        tag = self.save_final()
        best = self.best_tag()
        if best is not None and best != tag:  # the best evaluation's weights are the model, not the last step's
            # a whole load, as a resume does: DeepSpeed's load_module_only would read `latest` (the final tag) under ZeRO-3
            self.checkpoints.load(self.engine, best)
            if self.dist.is_main:
                log_json({"event": "export-best", "tag": best}, self.bar)
        model_dir = self.export()
        self.barrier()  # every rank finished training, checkpointing and exporting
        self.end("complete", tag)
        if self.dist.is_node_main:
            markers.write(self.marker_dir, markers.COMPLETE, {"step": self.step, "tag": tag})
        if self.dist.is_main:
            self.write_summary(tag, model_dir)
            log_json({"event": "complete", "step": self.step, "tag": tag, "model": str(model_dir), "stop_reason": self.stop_reason})
        return 0

    def run_tokens_per_second(self) -> Optional[float]:
        """Throughput of this run, without its first (warm-up/compile) step."""
        steps_timed = self.step - self.start_step - 1
        if steps_timed > 0 and self.first_step_done is not None:
            return steps_timed * self.tokens_per_step / (time.perf_counter() - self.first_step_done)
        return None

    def end(self, outcome: str, tag: str) -> None:
        """Training ended: the final state for the metrics and for the launcher's termination message (final.json)."""
        self.outcome = outcome
        self.final_tokens_per_second = self.run_tokens_per_second()  # one figure for final.json and summary.json
        self.metrics.finished.set(1)
        if self.dist.is_node_main:
            markers.write(self.marker_dir, markers.FINAL, {
                "step": self.step, "totalSteps": self.total, "loss": self.last_logged.get("loss"), "evalLoss": self.last_logged.get("eval_loss"),
                "tokensPerSecond": self.final_tokens_per_second, "outcome": outcome, "resized": self.resized,
                "stopReason": self.stop_reason, **self.best_state(),
                "lastCheckpoint": {"step": self.step, "tag": tag}})

    def publish_best(self) -> None:
        best = self.best_state()
        self.metrics.best_eval_loss.set(best.get("bestEvalLoss"))
        self.metrics.best_eval_step.set(best.get("bestEvalStep"))

    def best_state(self) -> dict[str, Any]:
        best = best_evaluation(self.eval_history)
        return {"bestEvalLoss": best.loss, "bestEvalStep": best.step} if best else {}

    def write_summary(self, tag: str, model_dir: Optional[Path]) -> None:
        summary = {"job": self.job.metadata.name, "steps": self.step, "total_steps": self.total,
                   "initial_loss": self.initial_loss, "final_loss": self.last_logged.get("loss"),
                   "tokens_per_second": self.final_tokens_per_second, "checkpoint": str(self.checkpoints.dir / tag), "tag": tag,
                   "model": str(model_dir) if model_dir else None, "resumed_from": self.resumed_from,
                   "world_size": self.dist.world_size, "parameters": count_params(self.cfg),
                   "flops_per_token": self.flops_per_token, "losses": self.history, "resized": self.resized,
                   "eval_loss": self.last_logged.get("eval_loss"), "eval_perplexity": self.last_logged.get("eval_perplexity"),
                   "eval_losses": self.eval_history, "trainable_parameters": self.trainable_parameters,
                   "stop_reason": self.stop_reason, "best_eval_loss": self.best_state().get("bestEvalLoss"),
                   "best_eval_step": self.best_state().get("bestEvalStep"), "best_checkpoint": self.best_tag()}
        (self.out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")

    # -------------------------------------------------------------------------------------- loop
    def run(self) -> int:
        self.setup()
        self.resume()
        try:
            if self.stopped_early_before():
                return self.finish()
            while self.step < self.total:
                self.train_step()
                self.log()
                if self.evaluation_due():
                    self.evaluate()
                    if self.after_evaluation():
                        return self.finish()
                if self.checkpoint_due():
                    self.save()
                if self.stop_requested():
                    return self.preempt()
            return self.finish()
        finally:
            self.loader.close()
            # a last scrape (Prometheus, the operator) should see the end; SIGTERM cuts the wait short
            linger = float(os.environ.get(FINAL_SCRAPE_ENV) or 0) if self.outcome else 0
            self.metrics.close(linger, stop=lambda: self.preemption.requested is not None)
            if self.bar is not None:
                self.bar.close()


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    try:
        job = load_job_file(args.job)
        preflight.check(job.spec)  # bad input fails here, naming field and file, before the model and DeepSpeed start
        accelerator = effective_accelerator(job.spec)
        dist = init_distributed(accelerator)
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        spec = fit_to_world(job.spec, dist.world_size)
        code = Trainer(job, args, dist, spec).run()
    except Exception as exc:  # the launcher reports the first rank's error as the pod's termination message
        markers.write_error(markers.marker_dir(args.output_dir), int(os.environ.get("RANK", 0)), exc)
        raise
    finally:
        release_allreduce_buffers(os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"), int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.destroy_process_group()
    return code


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)  # every file is written and closed; skip the seconds of torch/DeepSpeed interpreter teardown
