"""LLMTrainingJob v1alpha1: the one source of truth for the API.

The CRD in crds/ is generated from these models (see crd.py). Rules that the API server can check
are CEL `x-kubernetes-validations` on the models; the same rules are enforced here in Python so
that `llm-operator render` and `llm-train run` reject bad manifests without a cluster.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

from .contract import EXIT_BAD_INPUT
from .presets import PRESETS, Architecture, PresetName

GROUP = "llmtraining.dev"
VERSION = "v1alpha1"
KIND = "LLMTrainingJob"
PLURAL = "llmtrainingjobs"
SINGULAR = "llmtrainingjob"
SHORT_NAMES = ["ltj"]
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL_MAX = 63
WORKER_INFIX = "-worker-"
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# Kubernetes objects we pass through to the pod (Volume, Toleration, Affinity, EnvVar…): the API
# server validates them when the pod is created, so the CRD keeps them as opaque objects.
K8sObject = Annotated[
    dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})
]
Quantity = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
        }
    ),
]
IntOrQuantity = Annotated[
    int | str,
    WithJsonSchema({"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
]


def unchanged(fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> str:
    """A CEL transition rule: these fields keep their values (optional ones: stay set or unset)."""
    parts = [f"self.{f} == oldSelf.{f}" for f in fields]
    parts += [f"(has(self.{f}) ? has(oldSelf.{f}) && self.{f} == oldSelf.{f} : !has(oldSelf.{f}))" for f in optional]
    return " && ".join(parts)


# Every field but runPolicy.suspend is immutable: a running gang cannot change shape or recipe under DeepSpeed,
# and rejecting an edit beats accepting it and silently running the old spec. suspend is how a person or a queue
# (Kueue) stops and restarts the job. tests/unit/test_api.py checks these lists against the models.
IMMUTABLE_SPEC_FIELDS = ("image", "nodes", "slotsPerNode", "accelerator", "resources", "podTemplate", "launcher", "checkpoint",
                         "network", "monitoring", "gang")
# A job runs the built-in trainer (model, data, training, deepspeed) or its own program: either side may be absent.
BUILTIN_TRAINER_FIELDS = ("model", "data", "training", "deepspeed", "export")
IMMUTABLE_OPTIONAL_SPEC_FIELDS = (*BUILTIN_TRAINER_FIELDS, "program", "managedBy")
IMMUTABLE_RUN_POLICY_FIELDS = ("backoffLimit", "podFailurePolicy", "cleanPodPolicy")
IMMUTABLE_OPTIONAL_RUN_POLICY_FIELDS = ("activeDeadlineSeconds", "ttlSecondsAfterFinished", "stallTimeoutSeconds", "startupTimeoutSeconds")
IMMUTABLE_MESSAGE = ("spec is immutable once the job is created, except runPolicy.suspend: delete the job and create it again "
                     "(it resumes from the latest checkpoint)")


# On data, training and deepspeed: the CRD gives no `{}` default, so the API server can tell a program job that set one.
NO_OBJECT_DEFAULT: dict[str, Any] = {"x-llmto-no-object-default": True}


def cel(rule: str, message: str | None = None, *, message_expression: str | None = None, field_path: str | None = None):
    """One CEL x-kubernetes-validations entry."""
    entry: dict[str, str] = {"rule": rule}
    if message:
        entry["message"] = message
    if message_expression:
        entry["messageExpression"] = message_expression
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ApiModel(BaseModel):
    """camelCase on the wire, unknown fields rejected (a typo must not be silently ignored)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# --------------------------------------------------------------------------------------- pods
class ResourceRequirements(ApiModel):
    limits: dict[str, IntOrQuantity] = Field(default_factory=dict, description="Resource limits per worker pod, e.g. cpu, memory, nvidia.com/gpu.")
    requests: dict[str, IntOrQuantity] = Field(default_factory=dict, description="Resource requests per worker pod.")


class PodTemplate(ApiModel):
    """What is merged into every worker pod."""

    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels (the operator's llmtraining.dev/* labels win on conflict).")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[K8sObject] = Field(default_factory=list, description="Pod tolerations (core/v1 Toleration).")
    affinity: Optional[K8sObject] = Field(None, description="Pod affinity (core/v1 Affinity).")
    priority_class_name: Optional[str] = Field(None, description="PriorityClass of the worker pods.")
    scheduler_name: Optional[str] = Field(None, description="Scheduler for the worker pods, e.g. a gang scheduler.")
    service_account_name: Optional[str] = Field(None, description="ServiceAccount the worker pods run as.")
    image_pull_secrets: list[K8sObject] = Field(default_factory=list, description="imagePullSecrets (core/v1 LocalObjectReference).")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="Image pull policy of the trainer container.")
    volumes: list[K8sObject] = Field(default_factory=list, description="Extra pod volumes (core/v1 Volume).")
    volume_mounts: list[K8sObject] = Field(default_factory=list, description="Extra mounts in the trainer container (core/v1 VolumeMount).")
    env: list[K8sObject] = Field(default_factory=list, description="Extra env of the trainer container (core/v1 EnvVar); reaches every rank in both launcher modes.")
    run_as_user: int = Field(1000, ge=1, description="Non-root UID of the trainer container.")
    run_as_group: int = Field(1000, ge=0, description="GID of the trainer container.")
    fs_group: int = Field(1000, ge=0, description="fsGroup of the pod, so volumes are writable by the trainer.")
    termination_grace_period_seconds: int = Field(
        300, ge=0, description="Time between SIGTERM and SIGKILL; the trainer saves a checkpoint on SIGTERM, so leave it room."
    )


# ------------------------------------------------------------------------------------ launcher
class LauncherSpec(ApiModel):
    mode: Literal["noSsh", "ssh"] = Field(
        "noSsh",
        description="noSsh: every pod runs the DeepSpeed launcher for its own node_rank (no sshd). "
        "ssh: worker 0 launches all ranks over ssh (pdsh); every worker runs a non-root sshd.",
    )
    master_port: int = Field(29500, ge=1024, le=65535, description="torch.distributed rendezvous port on worker 0.")
    ssh_port: int = Field(2222, ge=1024, le=65535, description="Port of the non-root sshd in ssh mode.")
    peer_timeout_seconds: int = Field(
        600, ge=1, description="How long a pod waits for its peers' DNS names (and sshd, in ssh mode) before failing."
    )


# --------------------------------------------------------------------------------------- model
class ModelSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.preset) || has(self.huggingFacePath) || (has(self.architecture) && has(self.nLayers) && has(self.dModel) && has(self.nHeads))",
                    "set model.preset, model.huggingFacePath, or all of architecture, nLayers, dModel and nHeads"),
                cel("!has(self.dModel) || !has(self.nHeads) || self.dModel % self.nHeads == 0",
                    message_expression="'model.dModel (%d) must be divisible by model.nHeads (%d)'.format([self.dModel, self.nHeads])"),
                cel("!has(self.nHeads) || !has(self.nKvHeads) || self.nHeads % self.nKvHeads == 0",
                    message_expression="'model.nHeads (%d) must be divisible by model.nKvHeads (%d)'.format([self.nHeads, self.nKvHeads])"),
            ]
        }
    )

    preset: Optional[PresetName] = Field(None, description="Named size; explicit fields below override it. One of: " + ", ".join(PRESETS) + ".")
    architecture: Optional[Architecture] = Field(
        None,
        description="gpt (LayerNorm, GELU MLP, learned positions) or llama (RMSNorm, RoPE, SwiGLU, grouped-query attention); "
        "qwen2 (llama with q/k/v bias), qwen3 (llama with per-head q/k RMSNorm) and mistral (llama with a sliding window when its "
        "checkpoint sets one) export as those Hugging Face families.",
    )
    n_layers: Optional[int] = Field(None, ge=1, alias="nLayers", description="Transformer blocks.")
    d_model: Optional[int] = Field(None, ge=8, alias="dModel", description="Hidden size.")
    n_heads: Optional[int] = Field(None, ge=1, alias="nHeads", description="Attention heads.")
    n_kv_heads: Optional[int] = Field(None, ge=1, alias="nKvHeads", description="Key/value heads (grouped-query attention); defaults to nHeads.")
    ffn_hidden: Optional[int] = Field(None, ge=1, alias="ffnHidden", description="MLP hidden size; defaults to 4·dModel (gpt) or ⌈8/3·dModel⌉ to a multiple of 64 (llama).")
    seq_len: Optional[int] = Field(None, ge=8, alias="seqLen", description="Training sequence length in tokens.")
    vocab_size: Optional[int] = Field(None, ge=2, alias="vocabSize", description="Vocabulary size.")
    tie_embeddings: Optional[bool] = Field(None, description="Share input embedding and output head; default true for gpt, false for llama.")
    hugging_face_path: Optional[str] = Field(
        None, alias="huggingFacePath", description="Start from a Hugging Face model directory on a volume (config.json + safetensors); no hub downloads."
    )

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if not (self.preset or self.hugging_face_path or (self.architecture and self.n_layers and self.d_model and self.n_heads)):
            raise ValueError("set model.preset, model.huggingFacePath, or all of architecture, nLayers, dModel and nHeads")
        if self.hugging_face_path:
            return self
        r = self.resolved()
        if r["dModel"] % r["nHeads"]:
            raise ValueError(f"model.dModel ({r['dModel']}) must be divisible by model.nHeads ({r['nHeads']})")
        if r["nHeads"] % r["nKvHeads"]:
            raise ValueError(f"model.nHeads ({r['nHeads']}) must be divisible by model.nKvHeads ({r['nKvHeads']})")
        head = r.get("headDim") or r["dModel"] // r["nHeads"]
        if r["architecture"] != "gpt" and head % 2:
            raise ValueError(f"model: {r['architecture']} head size dModel/nHeads ({head}) must be even for RoPE")
        return self

    def resolved(self) -> dict[str, Any]:
        """Preset values overridden by the explicit fields, with every derived default filled in."""
        out: dict[str, Any] = dict(PRESETS[self.preset]) if self.preset else {}
        explicit = self.model_dump(by_alias=True, exclude_none=True, exclude={"preset", "hugging_face_path"})
        out.update(explicit)
        out.setdefault("architecture", "gpt")
        out.setdefault("nKvHeads", out.get("nHeads"))
        out.setdefault("seqLen", 1024)
        out.setdefault("vocabSize", 50304)
        out.setdefault("tieEmbeddings", out["architecture"] == "gpt")
        if "ffnHidden" not in out and out.get("dModel"):
            d = out["dModel"]
            out["ffnHidden"] = 4 * d if out["architecture"] == "gpt" else 64 * math.ceil(8 * d / 3 / 64)
        return out


# ---------------------------------------------------------------------------------------- data
# -- issue 11 (held-out evaluation): data.validation, training.evalIntervalSteps, training.evalSteps, status.progress.evalLoss
class ValidationDataSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("(has(self.paths) && size(self.paths) > 0) != has(self.fraction)", "set exactly one of data.validation.paths and data.validation.fraction"),
            ]
        }
    )

    paths: list[str] = Field(
        default_factory=list,
        description="Held-out files or glob patterns in data.format (same tokenDtype and tokenizer), never also in data.paths.",
    )
    fraction: Optional[float] = Field(
        None, gt=0, le=0.5,
        description="Hold out this fraction of the samples of every training file (its last windows); they are never trained on.",
    )

    @model_validator(mode="after")
    def _check(self) -> "ValidationDataSpec":
        if bool(self.paths) == (self.fraction is not None):
            raise ValueError("set exactly one of data.validation.paths and data.validation.fraction")
        return self


# -- end of issue 11 (held-out evaluation) block


SFT_FORMATS = ("chat", "promptCompletion")  # one example per row, the loss on its answer (issue 21)


class DataSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.format == 'synthetic' || (has(self.paths) && size(self.paths) > 0)", "data.paths is required unless data.format is synthetic", field_path=".paths"),
                cel("!(self.format in ['text', 'jsonl']) || has(self.tokenizer)", "data.tokenizer is required for text and jsonl data", field_path=".tokenizer"),
                cel("self.format != 'synthetic' || !has(self.validation)", "data.validation: synthetic data holds out its own samples; leave data.validation unset",
                    field_path=".validation"),
                # --- issue 21 (supervised fine-tuning) ---
                cel("!(self.format in ['chat', 'promptCompletion']) || has(self.tokenizer)",
                    "data.tokenizer is required for chat and promptCompletion data (a Hugging Face tokenizer directory)", field_path=".tokenizer"),
                cel("!has(self.packing) || !self.packing || self.format in ['chat', 'promptCompletion']",
                    "data.packing needs data.format chat or promptCompletion (text and jsonl are already concatenated)", field_path=".packing"),
            ]
        }
    )

    format: Literal["synthetic", "tokens", "text", "jsonl", "chat", "promptCompletion"] = Field(
        "synthetic",
        description="synthetic: random tokens (smoke tests, benchmarks); tokens: pre-tokenized binary files; "
        "text: plain text files; jsonl: one JSON object per line with a text field; "
        "chat: jsonl rows {messages: [{role, content}]} rendered with the tokenizer's chat template; "
        "promptCompletion: jsonl rows {prompt, completion} (supervised fine-tuning, one example per row).",
    )
    paths: list[str] = Field(default_factory=list, description="Files or glob patterns, read in sorted order (absolute, or relative to data.mountPath).")
    token_dtype: Literal["uint16", "uint32"] = Field("uint16", description="Element type of token files (uint16 fits vocabularies up to 65536).")
    tokenizer: Optional[str] = Field(
        None, description="A Hugging Face tokenizer.json, or a tokenizer directory (tokenizer.json + tokenizer_config.json, whose "
        "chat_template renders chat data), used for text, jsonl, chat and promptCompletion data.",
    )
    text_field: str = Field("text", description="Field of each jsonl object that holds the text.")
    volume: Optional[K8sObject] = Field(
        None, description="Volume source holding the data (e.g. {persistentVolumeClaim: {claimName: corpus}}), mounted read-only at mountPath."
    )
    mount_path: str = Field("/data", description="Where the data volume is mounted in the worker pods.")
    validation: Optional[ValidationDataSpec] = Field(
        None, description="Held-out data for evaluation (training.evalIntervalSteps): its own paths, or a fraction of the training files. "
        "Synthetic data holds out its own samples and takes no data.validation.",
    )
    # --- issue 21 (supervised fine-tuning) ---
    packing: bool = Field(
        False, description="chat and promptCompletion: put several examples in each sequence (position ids restart per example, "
        "no attention across examples); otherwise each example is one sequence, padded (padding is never a target).",
    )

    @model_validator(mode="after")
    def _check(self) -> "DataSpec":
        if self.format != "synthetic" and not self.paths:
            raise ValueError("data.paths is required unless data.format is synthetic")
        if self.format == "synthetic" and self.validation is not None:
            raise ValueError("data.validation: synthetic data holds out its own samples; leave data.validation unset")
        if self.format in ("text", "jsonl") and not self.tokenizer:
            raise ValueError("data.tokenizer is required for text and jsonl data")
        if self.format in SFT_FORMATS and not self.tokenizer:
            raise ValueError("data.tokenizer is required for chat and promptCompletion data (a Hugging Face tokenizer directory)")
        if self.packing and self.format not in SFT_FORMATS:
            raise ValueError("data.packing needs data.format chat or promptCompletion (text and jsonl are already concatenated)")
        return self


# ------------------------------------------------------------------------------------ training
class OffloadSpec(ApiModel):
    optimizer: Literal["none", "cpu", "nvme"] = Field("none", description="ZeRO optimizer-state offload (ZeRO ≥ 1).")
    parameters: Literal["none", "cpu", "nvme"] = Field("none", description="ZeRO parameter offload (ZeRO 3 only).")
    nvme_path: str = Field("/local_nvme", description="Directory on a local NVMe volume used for nvme offload.")


# -- issue 21 (LoRA, evaluate and adjust): training.lora, training.earlyStopping, export.mergeLora
ALL_LINEAR = "all-linear"


class LoraSpec(ApiModel):
    rank: int = Field(8, ge=1, le=4096, description="Rank r of each adapter (lora_A: r × in, lora_B: out × r).")
    alpha: float = Field(16.0, gt=0, description="Scaling numerator: the adapter's output is multiplied by alpha / rank (PEFT's lora_alpha).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input while training (PEFT's lora_dropout).")
    target_modules: list[str] = Field(
        default_factory=lambda: [ALL_LINEAR], min_length=1,
        description="Linear layers that get an adapter, as PEFT's target_modules: module names matched as the whole name or its last "
        "dotted parts (q_proj, self_attn.q_proj, c_attn), or [all-linear]: every linear layer but the output head. "
        "Every entry must match a module of the model.",
    )


class EarlyStoppingSpec(ApiModel):
    patience: int = Field(3, ge=1, description="Evaluations in a row without an improvement of the held-out loss by more than minDelta before the run stops.")
    min_delta: float = Field(0.0, ge=0, description="How much lower than the best held-out loss so far an evaluation must be to count as an improvement.")


class ExportSpec(ApiModel):
    merge_lora: bool = Field(False, description="With training.lora: besides the PEFT adapter, write the model with the adapters merged "
                             "into its weights (a plain Hugging Face model) to <model>/merged.")


class TrainingSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.warmupSteps <= self.steps", message_expression="'training.warmupSteps (%d) must not exceed training.steps (%d)'.format([self.warmupSteps, self.steps])"),
                cel("self.offload.parameters == 'none' || self.zeroStage == 3", "training.offload.parameters needs training.zeroStage 3", field_path=".offload.parameters"),
                cel("self.offload.optimizer == 'none' || self.zeroStage >= 1", "training.offload.optimizer needs training.zeroStage 1 or higher", field_path=".offload.optimizer"),
                # --- model parallelism (issue 11 part B) ---
                cel("self.pipelineStages == 1 || self.zeroStage <= 1",
                    message_expression="'training.zeroStage (%d) must be 0 or 1 with training.pipelineStages (%d) > 1: DeepSpeed does not "
                    "combine pipeline parallelism with ZeRO-2 or ZeRO-3'.format([self.zeroStage, self.pipelineStages])",
                    field_path=".zeroStage"),
                # --- LoRA, evaluate and adjust (issue 21) ---
                cel("!has(self.lora) || self.zeroStage <= 2", "training.lora needs training.zeroStage 0, 1 or 2 (ZeRO-3 is not supported with LoRA)",
                    field_path=".lora"),
                cel("!has(self.lora) || self.pipelineStages == 1", "training.lora cannot be combined with training.pipelineStages > 1",
                    field_path=".lora"),
                cel("!has(self.earlyStopping) || self.evalIntervalSteps > 0", "training.earlyStopping needs training.evalIntervalSteps > 0 (it watches the held-out loss)",
                    field_path=".earlyStopping"),
            ]
        }
    )

    steps: int = Field(1000, ge=1, description="Optimizer steps to train.")
    micro_batch_size: int = Field(1, ge=1, description="Sequences per rank per forward/backward pass.")
    global_batch_size: Optional[int] = Field(
        None, ge=1,
        description="Sequences per optimizer step across all ranks; gradient accumulation = globalBatchSize / "
        "(microBatchSize × nodes × slotsPerNode), which must divide exactly. Defaults to microBatchSize × nodes × slotsPerNode.",
    )
    precision: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="Training precision (fp16 uses dynamic loss scaling).")
    zero_stage: int = Field(1, ge=0, le=3, description="DeepSpeed ZeRO stage 0–3.")
    offload: OffloadSpec = Field(default_factory=OffloadSpec, description="ZeRO offload of optimizer state and parameters.")
    learning_rate: float = Field(3e-4, gt=0, description="Peak learning rate (AdamW).")
    min_learning_rate_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of the peak.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    gradient_clipping: float = Field(
        1.0, ge=0, description="Global gradient-norm clip (0 disables). Always written into the DeepSpeed config: its default changed between releases."
    )
    activation_checkpointing: bool = Field(False, description="Recompute each block's activations in backward to save memory.")
    compile: bool = Field(True, description="torch.compile the model inside the DeepSpeed engine (GPU only; ignored on CPU).")
    seed: int = Field(1234, ge=0, description="Seed for weights and data order.")
    log_interval_steps: int = Field(10, ge=1, description="Steps between JSON log lines and status updates.")
    eval_interval_steps: int = Field(
        0, ge=0, description="Steps between evaluations on the held-out data (data.validation; synthetic data holds out its own), and one at the "
        "last step; 0 turns evaluation off.",
    )
    eval_steps: int = Field(
        10, ge=1, description="Global batches in one evaluation: evalSteps × globalBatchSize held-out sequences, the same ones each time and on "
        "any number of ranks (each rank evaluates its share, as it trains on its share of a global batch).",
    )
    # --- model parallelism (issue 11 part B) ---
    pipeline_stages: int = Field(
        1, ge=1, le=256,
        description="Pipeline-parallel stages (DeepSpeed PipelineModule): the decoder's layers are split across this many ranks, "
        "and nodes × slotsPerNode / pipelineStages ranks do data parallelism. The gradient-accumulation steps are the pipeline's "
        "micro-batches per optimizer step. Needs zeroStage 0 or 1 and nodes × slotsPerNode divisible by it.",
    )
    # --- issue 21 (supervised fine-tuning) ---
    loss_on: Optional[Literal["assistant", "all"]] = Field(
        None, description="chat and promptCompletion data: assistant (the default) trains on the assistant's turns (or the completion) "
        "only, each with its end-of-turn token; all trains on every token but padding. Other formats always train on all tokens.",
    )
    pipeline_partition: Literal["blocks", "parameters"] = Field(
        "blocks",
        description="How layers are split into pipeline stages: blocks (the same number of transformer blocks per stage; "
        "model.nLayers must be divisible by pipelineStages; the embedding joins the first stage, final norm and head the last) or "
        "parameters (DeepSpeed balances parameter counts, any nLayers ≥ pipelineStages).",
    )

    # --- LoRA, evaluate and adjust (issue 21) ---
    lora: Optional[LoraSpec] = Field(
        None, description="Train low-rank adapters (LoRA) on the frozen weights of model.huggingFacePath instead of every weight; "
        "the export is a PEFT adapter (adapter_config.json, adapter_model.safetensors).",
    )
    early_stopping: Optional[EarlyStoppingSpec] = Field(
        None, description="End the run (Succeeded, reason EarlyStopped) when the held-out loss stopped improving; needs evalIntervalSteps.",
    )

    @model_validator(mode="after")
    def _check(self) -> "TrainingSpec":
        if self.lora is not None and self.zero_stage > 2:
            raise ValueError("training.lora needs training.zeroStage 0, 1 or 2 (ZeRO-3 is not supported with LoRA)")
        if self.lora is not None and self.pipeline_stages > 1:
            raise ValueError("training.lora cannot be combined with training.pipelineStages > 1")
        if self.early_stopping is not None and not self.eval_interval_steps:
            raise ValueError("training.earlyStopping needs training.evalIntervalSteps > 0 (it watches the held-out loss)")
        if self.warmup_steps > self.steps:
            raise ValueError(f"training.warmupSteps ({self.warmup_steps}) must not exceed training.steps ({self.steps})")
        if self.offload.parameters != "none" and self.zero_stage != 3:
            raise ValueError("training.offload.parameters needs training.zeroStage 3")
        if self.offload.optimizer != "none" and self.zero_stage < 1:
            raise ValueError("training.offload.optimizer needs training.zeroStage 1 or higher")
        if self.pipeline_stages > 1 and self.zero_stage > 1:
            raise ValueError(f"training.zeroStage ({self.zero_stage}) must be 0 or 1 with training.pipelineStages "
                             f"({self.pipeline_stages}) > 1: DeepSpeed does not combine pipeline parallelism with ZeRO-2 or ZeRO-3")
        return self


class DeepSpeedSpec(ApiModel):
    config: K8sObject = Field(
        default_factory=dict,
        description="Raw DeepSpeed config merged last over the generated one (escape hatch). It may not contradict "
        "train_batch_size, train_micro_batch_size_per_gpu or gradient_accumulation_steps derived from spec.training.",
    )

    # --- model parallelism (issue 11 part B) ---
    @model_validator(mode="after")
    def _check(self) -> "DeepSpeedSpec":
        if "tensor_parallel" in self.config:  # DeepSpeed would accept it, and each tensor-parallel rank would get other data
            raise ValueError("deepspeed.config.tensor_parallel is not supported by the trainer yet: its data loading, checkpoints "
                             "and export are not tensor-parallel aware (docs/trainer.md, tensor parallelism); use "
                             "training.pipelineStages for model parallelism")
        return self


# ---------------------------------------------------------------------------------- checkpoint
class CheckpointSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.resume.matches('^[A-Za-z0-9._-]+$')", "checkpoint.resume must be latest, none, or a checkpoint tag (letters, digits, . _ -)", field_path=".resume"),
            ]
        }
    )

    volume: Optional[K8sObject] = Field(
        None, description="Volume source for checkpoints, shared by all workers (e.g. a ReadWriteMany PVC); without it checkpoints live in an emptyDir and die with the pod."
    )
    mount_path: str = Field("/checkpoints", description="Where checkpoints are written in the worker pods.")
    interval_steps: int = Field(1000, ge=0, description="Save every this many steps (0: only at the end and on SIGTERM).")
    keep: int = Field(3, ge=1, description="Newest checkpoints to keep.")
    resume: str = Field("latest", max_length=253, description="latest: resume from the newest complete checkpoint if any; none: start fresh; otherwise a checkpoint tag.")

    @model_validator(mode="after")
    def _check(self) -> "CheckpointSpec":
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.resume):
            raise ValueError("checkpoint.resume must be latest, none, or a checkpoint tag (letters, digits, . _ -)")
        return self


# ------------------------------------------------------------------------------------- network
class NetworkSpec(ApiModel):
    profile: Literal["tcp", "infiniband", "roce", "efa"] = Field(
        "tcp", description="Interconnect: tcp (sockets), infiniband or roce (NCCL IB verbs), efa (AWS libfabric). The RDMA profiles "
        "add IPC_LOCK; for a non-root container the node's container runtime must also allow unlimited locked memory (memlock)."
    )
    interfaces: list[str] = Field(default_factory=list, description="Network interfaces for bootstrap/socket traffic (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME).")
    ib_hcas: list[str] = Field(default_factory=list, alias="ibHcas", description="RDMA devices to use (NCCL_IB_HCA), e.g. mlx5_0; infiniband/roce only.")
    gid_index: Optional[int] = Field(None, ge=0, description="RoCE GID index (NCCL_IB_GID_INDEX); default 3 for roce.")
    rdma_resources: Optional[dict[str, IntOrQuantity]] = Field(
        None,
        description="Device-plugin resources per pod for the fabric. Default: rdma/rdma_shared_device_a: 1 for infiniband and roce, "
        "vpc.amazonaws.com/efa: 1 for efa, none for tcp.",
    )
    host_network: bool = Field(False, description="Run worker pods in the host network namespace.")
    shm_size: Quantity = Field("8Gi", description="Size of the memory-backed /dev/shm (NCCL and data loaders need more than the container default).")
    nccl_env: dict[str, str] = Field(default_factory=dict, alias="ncclEnv", description="Extra NCCL_* (or other fabric) environment variables; they win over the profile's.")


# ---------------------------------------------------------------------------------- run policy
class ExitCodesRule(ApiModel):
    operator: Literal["In", "NotIn"] = Field(..., description="In: the rule matches when the trainer's exit code is one of values; NotIn: when it is none of them.")
    values: list[int] = Field(..., min_length=1, max_length=255, description="Exit codes (non-zero; 0 never fails a pod).")


class PodConditionRule(ApiModel):
    type: str = Field(..., min_length=1, description="Pod condition type, e.g. DisruptionTarget (set by preemption, eviction, node drain and node loss).")
    status: Literal["True", "False", "Unknown"] = Field("True", description="Condition status that matches.")


class PodFailureRule(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.onExitCodes) != has(self.onPodConditions)", "a podFailurePolicy rule needs exactly one of onExitCodes and onPodConditions"),
            ]
        }
    )

    action: Literal["FailJob", "Ignore", "Count"] = Field(
        ...,
        description="FailJob: fail the job at once, no restart. Ignore: restart the gang without counting toward backoffLimit. "
        "Count: restart the gang and count it toward backoffLimit.",
    )
    on_exit_codes: Optional[ExitCodesRule] = Field(None, description="Match the exit code of the failed worker's trainer container.")
    on_pod_conditions: Optional[list[PodConditionRule]] = Field(
        None, min_length=1, description="Match when the failed worker pod has any of these conditions. A worker pod deleted by "
        "anything but the operator counts as having DisruptionTarget=True."
    )

    @model_validator(mode="after")
    def _one_matcher(self) -> "PodFailureRule":
        if (self.on_exit_codes is None) == (self.on_pod_conditions is None):
            raise ValueError("a podFailurePolicy rule needs exactly one of onExitCodes and onPodConditions")
        return self


DEFAULT_FAILURE_RULES: list[Any] = [  # also the CRD schema default, so `kubectl get -o yaml` shows them
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [EXIT_BAD_INPUT]}},
]


def _default_failure_rules() -> list[PodFailureRule]:
    return [PodFailureRule.model_validate(rule) for rule in DEFAULT_FAILURE_RULES]


class PodFailurePolicy(ApiModel):
    rules: list[PodFailureRule] = Field(
        default_factory=_default_failure_rules,
        json_schema_extra={"default": DEFAULT_FAILURE_RULES},
        max_length=20,
        description="Checked in order against the first worker that failed; the first match decides. A failure no rule matches "
        "counts toward backoffLimit. Default: two rules. Ignore on DisruptionTarget, so preemption, eviction, node drain, node loss "
        f"and a worker deleted by someone else restart the gang for free; FailJob on exit code {EXIT_BAD_INPUT}, the launcher's pre-flight "
        "check of the input files (tokenizer, token files, Hugging Face directory), which no restart can fix. Every other failure "
        "(crash, OOM kill, NCCL error, stall) counts. "
        "Typical addition: {action: FailJob, onExitCodes: {operator: In, values: [1]}} to stop at the first Python exception.",
    )


class RunPolicy(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [
            cel(unchanged(IMMUTABLE_RUN_POLICY_FIELDS, IMMUTABLE_OPTIONAL_RUN_POLICY_FIELDS), IMMUTABLE_MESSAGE)]}
    )

    backoff_limit: int = Field(
        3, ge=0, description="Gang restarts that count (see podFailurePolicy) before the job fails with reason BackoffLimitExceeded. "
        "A restart stops every worker (SIGTERM, so live ranks checkpoint), waits until all are gone and a backoff has passed "
        "(10 s doubling to 5 min), and starts a new gang that resumes from the latest checkpoint."
    )
    pod_failure_policy: PodFailurePolicy = Field(
        default_factory=PodFailurePolicy, description="Which worker failures fail the job at once, restart it for free, or count toward backoffLimit."
    )
    active_deadline_seconds: Optional[int] = Field(
        None, ge=1, description="Wall-clock limit from the job's start (its first pods), restarts included. Past it the gang is stopped "
        "(SIGTERM, so the trainer saves) and the job fails with reason DeadlineExceeded."
    )
    ttl_seconds_after_finished: Optional[int] = Field(
        None, ge=0, description="Delete the job, and with it every child, this long after it Succeeded or Failed. Unset: keep it."
    )
    stall_timeout_seconds: Optional[int] = Field(
        None, ge=10, description="Restart the gang (a counted failure, reason Stalled) when rank 0's training step has not advanced "
        "for this long while Running, e.g. a hung NCCL collective. Unset: off."
    )
    startup_timeout_seconds: Optional[int] = Field(
        None, ge=10, description="Like stallTimeoutSeconds, for the first step of each gang: from all workers Running to the first step "
        "the operator reads (model build, compilation, data loading and checkpoint loading take minutes). Unset: off."
    )
    suspend: bool = Field(
        False, description="The one mutable field. true: the gang is stopped (SIGTERM, so the trainer checkpoints), phase Suspended, "
        "and the activeDeadlineSeconds clock pauses; a job created suspended creates no pods. false again: a new gang resumes from "
        "the latest checkpoint (status.restarts counts it, countedRestarts does not)."
    )
    clean_pod_policy: Literal["None", "Running", "All"] = Field(
        "Running", description="Pods deleted when the job finishes: None, Running (still running ones), All. Pods of a gang being restarted are always deleted."
    )


class MonitoringSpec(ApiModel):
    port: int = Field(
        29600, ge=1024, le=65535, description="Port of the trainer's Prometheus /metrics endpoint in every worker pod. The default is "
        "outside Prometheus' exporter range (9100-9999) and clear of Prometheus itself (9090), the kubelet and torch's rendezvous ports."
    )
    final_scrape_seconds: int = Field(
        30, ge=0, le=600, description="After training ends, each worker keeps /metrics up this long (SIGTERM cuts it short), so that "
        "Prometheus' last scrape sees the final step; the pod exits that much later."
    )
    peak_tflops: Optional[float] = Field(None, gt=0, alias="peakTFLOPs", description="Per-accelerator peak used for MFU; defaults to the detected GPU's dense bf16 peak.")


# ---------------------------------------------------------------------------------------- gang
GangScheduler = Literal["kubernetes", "volcano", "coscheduling", "none"]
GANG_SCHEDULERS: tuple[str, ...] = ("kubernetes", "volcano", "coscheduling", "none")
# A Kubernetes label key (apimachinery IsQualifiedName): an optional DNS-subdomain prefix and "/", then a name of at
# most 63 characters. The prefix's 253-character limit is held by maxLength (253 + "/" + 63).
LABEL_KEY_PATTERN = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_KEY_MAX = 317
TOPOLOGY_ONE_OF = "gang.topology needs exactly one of required or preferred"
LabelKey = Annotated[str, Field(pattern=LABEL_KEY_PATTERN, max_length=LABEL_KEY_MAX)]


class TopologySpec(ApiModel):
    """The network domain the gang is placed in: a node label key naming a topology level (a block, a rack)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [cel("has(self.required) != has(self.preferred)", TOPOLOGY_ONE_OF)]})

    required: Optional[LabelKey] = Field(
        None, description="All workers in one domain of this level (e.g. cloud.provider.com/topology-block), or none runs: a gang that fits "
        "no free domain waits whole. Kueue's Topology Aware Scheduling places it when the job is queued by Kueue; else kube-scheduler's "
        "PodGroup topology constraint (gang.scheduler kubernetes, feature gate TopologyAwareWorkloadScheduling). Where neither serves it "
        "the job fails with reason TopologyUnavailable.")
    preferred: Optional[LabelKey] = Field(
        None, description="One domain of this level when the gang fits in one, more when it must. Where no placement path serves it, the "
        "gang runs without it and the condition TopologyPlaced says so.")

    @model_validator(mode="after")
    def _one_of(self) -> "TopologySpec":
        if (self.required is None) == (self.preferred is None):
            raise ValueError(TOPOLOGY_ONE_OF)
        return self

    @property
    def level(self) -> str:
        return self.required or self.preferred or ""


class GangSpec(ApiModel):
    """All-or-nothing scheduling of the worker pods: a gang that does not fit waits whole instead of holding part of the GPUs."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [
            cel("!has(self.minAvailable) || !has(self.scheduler) || self.scheduler != 'none'",
                "gang.minAvailable needs a gang scheduler (gang.scheduler is none)", field_path=".minAvailable"),
        ]}
    )

    scheduler: Optional[GangScheduler] = Field(
        None, description="kubernetes: kube-scheduler's own gang scheduling (a scheduling.k8s.io/v1beta1 Workload and PodGroup, feature "
        "gate GenericWorkload); volcano: a scheduling.volcano.sh PodGroup and schedulerName volcano; coscheduling: a scheduling.x-k8s.io "
        "PodGroup for the scheduler-plugins coscheduling plugin; none: every pod is scheduled on its own. Unset: the operator's default "
        "(kubernetes when the API server serves the Workload API, else none). The condition GangScheduled says which was used."
    )
    min_available: Optional[int] = Field(
        None, ge=1, description="Workers that must fit at once for any to be bound (the PodGroup's minCount/minMember); at most nodes. "
        "Unset: all of them. DeepSpeed needs every rank, so less only makes sense when the trainer can wait for the rest."
    )
    topology: Optional[TopologySpec] = Field(
        None, description="Place the gang inside one network domain (all-reduce runs at the speed of its slowest link). Immutable.")


# ------------------------------------------------------------------------------------- program
ProgramLauncher = Literal["deepspeed", "torchrun", "exec"]


class ProgramSpec(ApiModel):
    """The user's own training program, run on every rank instead of the built-in trainer (docs/programs.md)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.command.size() > 0 && self.command[0] != ''", "program.command must name the program to run", field_path=".command"),
            ]
        }
    )

    command: list[str] = Field(
        ..., description="What each rank runs, e.g. [python, train.py, --config, cfg.yaml]; $(VAR) references expand as in a container's command."
    )
    working_dir: Optional[str] = Field(None, description="Working directory of the program (default: the image's, else the trainer's home).")
    launcher: ProgramLauncher = Field(
        "deepspeed",
        description="deepspeed: DeepSpeed's runner starts slotsPerNode ranks per pod (launcher.mode noSsh or ssh); torchrun: torchrun in "
        "every pod, rendezvous on worker 0; exec: the command runs once per pod and starts its own workers (accelerate, llamafactory-cli, axolotl).",
    )

    @model_validator(mode="after")
    def _check_command(self) -> "ProgramSpec":
        if not self.command or not self.command[0]:
            raise ValueError("program.command must name the program to run")
        return self


# ---------------------------------------------------------------------------------------- spec
MULTIKUEUE = "kueue.x-k8s.io/multikueue"  # Kueue's MultiKueueControllerName
ManagedBy = Literal["kueue.x-k8s.io/multikueue"]


LORA_NEEDS_BASE = ("training.lora needs model.huggingFacePath: adapters train on a pretrained model's frozen weights, "
                   "and PEFT loads them onto that model")


class LLMTrainingJobSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(unchanged(IMMUTABLE_SPEC_FIELDS, IMMUTABLE_OPTIONAL_SPEC_FIELDS), IMMUTABLE_MESSAGE),
                cel("has(self.model) || has(self.program)", "set model (the built-in trainer) or program (your own training program)"),
                *[cel(f"!has(self.program) || !has(self.{field})",
                      f"{field} configures the built-in trainer and cannot be combined with program: remove {field} (or program)",
                      field_path=f".{field}") for field in BUILTIN_TRAINER_FIELDS],
                cel(
                    "!has(self.training) || (self.nodes * self.slotsPerNode) % self.training.pipelineStages != 0 || !has(self.training.globalBatchSize) || "
                    "self.training.globalBatchSize % (self.training.microBatchSize * self.nodes * self.slotsPerNode / self.training.pipelineStages) == 0",
                    message_expression="self.training.pipelineStages == 1 ? "
                    "'training.globalBatchSize (%d) must be divisible by microBatchSize × nodes × slotsPerNode = %d × %d × %d = %d'"
                    ".format([self.training.globalBatchSize, self.training.microBatchSize, self.nodes, self.slotsPerNode, "
                    "self.training.microBatchSize * self.nodes * self.slotsPerNode]) : "
                    "'training.globalBatchSize (%d) must be divisible by microBatchSize × nodes × slotsPerNode / pipelineStages = %d × %d × %d / %d = %d'"
                    ".format([self.training.globalBatchSize, self.training.microBatchSize, self.nodes, self.slotsPerNode, self.training.pipelineStages, "
                    "self.training.microBatchSize * self.nodes * self.slotsPerNode / self.training.pipelineStages])",
                    field_path=".training.globalBatchSize",
                ),
                # --- model parallelism (issue 11 part B) ---
                cel(
                    "!has(self.training) || (self.nodes * self.slotsPerNode) % self.training.pipelineStages == 0",
                    message_expression="'training.pipelineStages (%d) must divide nodes × slotsPerNode = %d × %d = %d'"
                    ".format([self.training.pipelineStages, self.nodes, self.slotsPerNode, self.nodes * self.slotsPerNode])",
                    field_path=".training.pipelineStages",
                ),
                cel(
                    "!has(self.model) || !has(self.training) || !has(self.model.nLayers) || "
                    "(self.training.pipelinePartition == 'blocks' ? self.model.nLayers % self.training.pipelineStages == 0 "
                    ": self.model.nLayers >= self.training.pipelineStages)",
                    message_expression="self.training.pipelinePartition == 'blocks' ? 'model.nLayers (%d) must be divisible by training.pipelineStages (%d) "
                    "with training.pipelinePartition blocks (or set pipelinePartition: parameters)'.format([self.model.nLayers, self.training.pipelineStages]) "
                    ": 'model.nLayers (%d) must be at least training.pipelineStages (%d)'.format([self.model.nLayers, self.training.pipelineStages])",
                    field_path=".training.pipelineStages",
                ),
                cel("self.accelerator == 'gpu' || !has(self.training) || self.training.precision != 'fp16'",
                    "training.precision fp16 needs accelerator gpu (use bf16 or fp32 on cpu)",
                    field_path=".training.precision"),
                cel("!has(self.gang.minAvailable) || self.gang.minAvailable <= self.nodes",
                    message_expression="'gang.minAvailable (%d) must not exceed nodes (%d)'.format([self.gang.minAvailable, self.nodes])",
                    field_path=".gang.minAvailable"),
                cel("!has(self.training) || self.training.evalIntervalSteps == 0 || !has(self.data) || self.data.format == 'synthetic' || has(self.data.validation)",
                    "training.evalIntervalSteps needs data.validation (paths or fraction) unless data.format is synthetic", field_path=".training.evalIntervalSteps"),
                # --- issue 21 (supervised fine-tuning) ---
                cel("!has(self.training) || !has(self.training.lossOn) || self.training.lossOn != 'assistant' || "
                    "(has(self.data) && self.data.format in ['chat', 'promptCompletion'])",
                    "training.lossOn assistant needs data.format chat or promptCompletion", field_path=".training.lossOn"),
                cel("!has(self.training) || self.training.pipelineStages == 1 || !has(self.data) || !(self.data.format in ['chat', 'promptCompletion'])",
                    "training.pipelineStages > 1 does not support data.format chat or promptCompletion yet", field_path=".training.pipelineStages"),
                cel("!has(self.data) || !(self.data.format in ['chat', 'promptCompletion']) || !has(self.data.validation) || !has(self.data.validation.fraction)",
                    "data.validation.fraction: chat and promptCompletion data hold out whole examples; use data.validation.paths",
                    field_path=".data.validation.fraction"),
                cel("!has(self.training) || !has(self.training.lora) || (has(self.model) && has(self.model.huggingFacePath))",
                    LORA_NEEDS_BASE, field_path=".training.lora"),
                cel("!has(self.export) || !has(self.export.mergeLora) || !self.export.mergeLora || (has(self.training) && has(self.training.lora))",
                    "export.mergeLora needs training.lora", field_path=".export.mergeLora"),
            ]
        }
    )

    image: str = Field(..., min_length=1, description="Trainer container image (the Dockerfile's trainer target).")
    nodes: int = Field(1, ge=1, le=4096, description="Worker pods, one per node; DeepSpeed node_rank i runs in pod <job>-worker-<i>.")
    slots_per_node: int = Field(1, ge=1, le=64, description="DeepSpeed processes per pod (= GPUs per pod on GPU nodes).")
    accelerator: Literal["gpu", "cpu"] = Field(
        "gpu", description="gpu: each pod requests slotsPerNode nvidia.com/gpu and tolerates the nvidia.com/gpu taint; cpu: gloo ranks on CPU (tests, smoke runs)."
    )
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements, description="Resources of each worker pod's trainer container.")
    pod_template: PodTemplate = Field(default_factory=PodTemplate, description="Merged into each worker pod.")
    launcher: LauncherSpec = Field(default_factory=LauncherSpec, description="How DeepSpeed's launcher reaches the ranks.")
    model: Optional[ModelSpec] = Field(None, description="The decoder the built-in trainer trains (or set program).")
    data: DataSpec = Field(default_factory=DataSpec, description="Training data of the built-in trainer.", json_schema_extra=NO_OBJECT_DEFAULT)
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimization of the built-in trainer.", json_schema_extra=NO_OBJECT_DEFAULT)
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed config overrides of the built-in trainer.",
                                     json_schema_extra=NO_OBJECT_DEFAULT)
    export: ExportSpec = Field(default_factory=ExportSpec, description="The final model the built-in trainer writes.", json_schema_extra=NO_OBJECT_DEFAULT)
    program: Optional[ProgramSpec] = Field(None, description="Your own training program instead of the built-in trainer (model, data, training, deepspeed).")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing and resume.")
    network: NetworkSpec = Field(default_factory=NetworkSpec, description="Interconnect and pod networking.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Lifecycle of the job.")
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec, description="Trainer metrics.")
    gang: GangSpec = Field(default_factory=GangSpec, description="Gang scheduling of the worker pods.")
    managed_by: Optional[ManagedBy] = Field(
        None, description=f"The controller that reconciles the job, as Kubernetes Jobs have it. Unset: this operator. {MULTIKUEUE}: Kueue's "
        "MultiKueue, on a manager cluster: the operator creates the job's Kueue Workload and no pods, Kueue runs a copy on a worker cluster "
        "and copies its status back. Immutable.")

    @property
    def model_spec(self) -> ModelSpec:
        """The built-in trainer's model (a program job has none)."""
        if self.model is None:
            raise ValueError("this job runs its own program: it has no model")
        return self.model

    @property
    def world_size(self) -> int:
        return self.nodes * self.slots_per_node

    @property
    def data_parallel_size(self) -> int:
        """Ranks that see different data: the world size over the pipeline stages."""
        return self.world_size // self.training.pipeline_stages

    def check_parallelism(self) -> None:
        """Pipeline stages against the world size and the model's layers (model parallelism, issue 11 part B)."""
        stages = self.training.pipeline_stages
        if self.world_size % stages:
            raise ValueError(f"training.pipelineStages ({stages}) must divide nodes × slotsPerNode = "
                             f"{self.nodes} × {self.slots_per_node} = {self.world_size}")
        layers = None if self.model is None or self.model.hugging_face_path else self.model.resolved().get("nLayers")
        if layers is not None:
            check_pipeline_layers(layers, stages, self.training.pipeline_partition)

    def batch_plan(self) -> tuple[int, int, int]:
        """(micro batch per rank, gradient accumulation steps, global batch), checked. With pipeline stages the
        accumulation steps are the pipeline's micro-batches per step, and only the data-parallel ranks multiply."""
        self.check_parallelism()
        micro = self.training.micro_batch_size
        per_step = micro * self.data_parallel_size
        global_batch = self.training.global_batch_size or per_step
        if global_batch % per_step:
            stages = self.training.pipeline_stages
            raise ValueError(
                f"training.globalBatchSize ({global_batch}) must be divisible by microBatchSize × nodes × slotsPerNode"
                + (f" / pipelineStages = {micro} × {self.nodes} × {self.slots_per_node} / {stages}" if stages > 1 else
                   f" = {micro} × {self.nodes} × {self.slots_per_node}") + f" = {per_step}"
            )
        return micro, global_batch // per_step, global_batch

    @model_validator(mode="after")
    def _check(self) -> "LLMTrainingJobSpec":
        if self.program is not None:
            for field in BUILTIN_TRAINER_FIELDS:
                if field in self.model_fields_set:
                    raise ValueError(f"{field} configures the built-in trainer and cannot be combined with program: remove {field} (or program)")
            return self._check_pods()
        if self.model is None:
            raise ValueError("set model (the built-in trainer) or program (your own training program)")
        self.batch_plan()
        if self.accelerator == "cpu" and self.training.precision == "fp16":
            raise ValueError("training.precision fp16 needs accelerator gpu (use bf16 or fp32 on cpu)")
        if self.training.eval_interval_steps and self.data.format != "synthetic" and self.data.validation is None:
            raise ValueError("training.evalIntervalSteps needs data.validation (paths or fraction) unless data.format is synthetic")
        self._check_sft()
        if self.training.lora is not None and not self.model.hugging_face_path:
            raise ValueError(LORA_NEEDS_BASE)
        if self.export.merge_lora and self.training.lora is None:
            raise ValueError("export.mergeLora needs training.lora")
        return self._check_pods()

    # --- issue 21 (supervised fine-tuning) ---
    def _check_sft(self) -> None:
        sft = self.data.format in SFT_FORMATS
        if self.training.loss_on == "assistant" and not sft:
            raise ValueError(f"training.lossOn assistant needs data.format chat or promptCompletion (data.format is {self.data.format})")
        if sft and self.training.pipeline_stages > 1:
            raise ValueError(f"training.pipelineStages ({self.training.pipeline_stages}) > 1 does not support data.format {self.data.format} yet "
                             "(the pipeline's loss has no target mask): use pipelineStages 1 with ZeRO")
        if sft and self.data.validation is not None and self.data.validation.fraction is not None:
            raise ValueError(f"data.validation.fraction: data.format {self.data.format} holds out whole examples; "
                             "use data.validation.paths (a held-out jsonl file)")

    def _check_pods(self) -> "LLMTrainingJobSpec":
        gpus = self.resources.limits.get("nvidia.com/gpu")
        if self.accelerator == "gpu" and gpus is not None and int(gpus) != self.slots_per_node:
            raise ValueError(f"resources.limits nvidia.com/gpu ({gpus}) must equal slotsPerNode ({self.slots_per_node})")
        if self.gang.min_available is not None:
            if self.gang.min_available > self.nodes:
                raise ValueError(f"gang.minAvailable ({self.gang.min_available}) must not exceed nodes ({self.nodes})")
            if self.gang.scheduler == "none":
                raise ValueError("gang.minAvailable needs a gang scheduler (gang.scheduler is none)")
        return self


# -------------------------------------------------------------------------------------- status
class Condition(ApiModel):
    model_config = ConfigDict(extra="ignore")
    type: str = Field(..., description="Created, Running, Succeeded, Failed, Suspended, Restarting, ProgressStalled, Queued, GangScheduled; "
                      "and kstatus's Ready, Reconciling (in progress) and Stalled (failed), set from the phase (docs/lifecycle.md).")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase reason.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: Optional[str] = Field(None, description="When status last changed (RFC 3339).")
    observed_generation: Optional[int] = Field(None, description="metadata.generation this condition was computed from.")


class Progress(ApiModel):
    model_config = ConfigDict(extra="ignore")
    step: int = Field(0, description="Last completed optimizer step.")
    total_steps: int = Field(0, description="spec.training.steps.")
    step_of_total: str = Field("", description="step/totalSteps, for display.")
    loss: Optional[float] = Field(None, description="Training loss at the last logged step.")
    tokens_per_second: Optional[float] = Field(None, description="Throughput over the last logging interval, all ranks.")
    mfu: Optional[float] = Field(None, description="Model FLOPs utilization (0–1).")
    eval_loss: Optional[float] = Field(None, description="Loss on the held-out data at the last evaluation (training.evalIntervalSteps).")
    best_eval_loss: Optional[float] = Field(None, description="Lowest held-out loss of the run so far (the model exported at the end is this one's).")
    best_eval_step: Optional[int] = Field(None, description="Step of bestEvalLoss.")
    update_time: Optional[str] = Field(None, description="When the operator last saw the step advance (stall detection counts from here).")


class CheckpointStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")
    step: int = Field(..., description="Step of the checkpoint.")
    tag: str = Field(..., description="DeepSpeed checkpoint tag.")
    path: Optional[str] = Field(None, description="Directory of the checkpoint.")
    time: Optional[str] = Field(None, description="When it was completed.")


class FailureStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")
    rank: Optional[int] = Field(None, description="Node rank of the failed worker.")
    pod: Optional[str] = Field(None, description="Failed pod.")
    node: Optional[str] = Field(None, description="Kubernetes node it ran on.")
    exit_code: Optional[int] = Field(None, description="Exit code of the trainer container.")
    reason: Optional[str] = Field(
        None, description="Root cause: OOMKilled, Evicted, Preempted, NodeLost, PodDeleted, NCCLError, UserError (a FailJob rule matched "
        "the exit code), Stalled, DeadlineExceeded or Error."
    )
    message: Optional[str] = Field(None, description="Detail: the failing rank's last error line (the trainer's termination message) or the pod status.")
    time: Optional[str] = Field(None, description="When the operator saw the failure.")


class LLMTrainingJobStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")
    phase: Optional[Literal["Pending", "Created", "Running", "Succeeded", "Failed", "Suspended", "Restarting"]] = Field(None, description="Summary of the conditions.")
    conditions: list[Condition] = Field(default_factory=list, description="Latest observations of the job's state.")
    observed_generation: Optional[int] = Field(None, description="metadata.generation the status describes.")
    ready_nodes: int = Field(0, description="Worker pods that are Running and Ready.")
    nodes_ready: str = Field("", description="readyNodes/nodes, for display.")
    restarts: int = Field(0, description="Gang restarts so far, counted or not; worker pods carry it as the llmtraining.dev/restart label.")
    counted_restarts: int = Field(0, description="Restarts that count toward runPolicy.backoffLimit.")
    restart_time: Optional[str] = Field(None, description="While Restarting: when the next gang may start (the backoff).")
    suspended_seconds: float = Field(0, description="Time spent suspended, which activeDeadlineSeconds does not count.")
    first_step_time: Optional[str] = Field(None, description="When the operator first read a training step (time to first step = this - creation).")
    lost_seconds: float = Field(
        0, description="Seconds lost to restarts and stalls: for each restart, from the last step read before the failure to the first step of the next gang."
    )
    start_time: Optional[str] = Field(None, description="When the job's pods were first created.")
    completion_time: Optional[str] = Field(None, description="When the job Succeeded or Failed.")
    progress: Optional[Progress] = Field(None, description="Training progress reported by the trainer.")
    last_checkpoint: Optional[CheckpointStatus] = Field(None, description="Newest complete checkpoint.")
    failure: Optional[FailureStatus] = Field(None, description="The last failure: why the job failed, or why its last gang was restarted.")
    placement: Optional[str] = Field(
        None, description="With spec.gang.topology: where the gang landed, each worker's domain at that level (its node's label), once all "
        "are bound; one line when they share one domain, e.g. `cloud.provider.com/topology-block=b1 (all 4 workers)`.")


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str
    namespace: str = "default"
    uid: Optional[str] = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LLMTrainingJob(BaseModel):
    """A whole manifest: apiVersion, kind, metadata, spec (status is ignored on input)."""

    model_config = ConfigDict(
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.metadata.name.size() + " + str(len(WORKER_INFIX)) + " + string(self.spec.nodes - 1).size() <= " + str(DNS_LABEL_MAX),
                    message_expression="'metadata.name is too long: pod name %s" + WORKER_INFIX
                    + "%d would exceed 63 characters'.format([self.metadata.name, self.spec.nodes - 1])",
                ),
                cel(
                    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                    "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): it names the job's headless Service",
                ),
            ]
        },
    )

    api_version: Literal["llmtraining.dev/v1alpha1"] = Field("llmtraining.dev/v1alpha1", alias="apiVersion")
    kind: Literal["LLMTrainingJob"] = "LLMTrainingJob"
    metadata: ObjectMeta
    spec: LLMTrainingJobSpec
    status: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _check_names(self) -> "LLMTrainingJob":
        check_job_name(self.metadata.name, self.spec.nodes)
        return self


def check_pipeline_layers(n_layers: int, stages: int, partition: str) -> None:
    """model.nLayers against training.pipelineStages (also for Hugging Face models, once their config is read)."""
    if partition == "blocks" and n_layers % stages:
        raise ValueError(f"model.nLayers ({n_layers}) must be divisible by training.pipelineStages ({stages}) with "
                         "training.pipelinePartition blocks (or set pipelinePartition: parameters)")
    if n_layers < stages:
        raise ValueError(f"model.nLayers ({n_layers}) must be at least training.pipelineStages ({stages})")


def check_job_name(name: str, nodes: int) -> None:
    """The headless Service is named after the job and each pod's hostname is <job>-worker-<i>: both are DNS labels."""
    if not DNS_1035_LABEL.match(name):
        raise ValueError(
            f"metadata.name {name!r} must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): it names the job's headless Service"
        )
    longest = f"{name}{WORKER_INFIX}{nodes - 1}"
    if len(longest) > DNS_LABEL_MAX:
        raise ValueError(
            f"metadata.name is too long: pod name {longest!r} has {len(longest)} characters, more than {DNS_LABEL_MAX} "
            f"(the name may have at most {DNS_LABEL_MAX - len(WORKER_INFIX) - len(str(nodes - 1))} characters with {nodes} nodes)"
        )
