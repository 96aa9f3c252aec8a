"""Fail fast: every check of a job that needs only its manifest and its files, before any model is built.

Run by `llm-train validate`, at the start of `llm-train run` and of every rank (worker.py), and by the in-pod
`llm-train launch` before DeepSpeed starts, so a bad input fails in seconds, not after the model and the
DeepSpeed engine were built. Each problem names the manifest field and the file:

  model.huggingFacePath   the directory, its config.json (parses, a supported model), its safetensors weights
  model.seqLen            at most the Hugging Face model's positions; the token files hold at least seqLen + 1 tokens
  data.tokenizer          exists and parses as a tokenizers tokenizer.json
  model.vocabSize         holds every id of the tokenizer (data.tokenDtype too)
  data.paths              every pattern matches files; token files are whole tokenDtype elements; jsonl has textField
  data.validation         its files, like data.paths and none of them a training file; a fraction leaves held-out windows
  chat, promptCompletion  every row has its fields (messages with known roles and an assistant turn; prompt and
                          completion); the first PREFLIGHT_EXAMPLES rows of each file render with the chat template
                          and tokenize (the trainer renders every row, before it builds the model, with the same errors)
  training.lora           every targetModules entry names linear layers of the model

`llm-train validate` runs where the manifest is written, where the pods' volumes are not: a path on a volume the
spec mounts (data.volume, checkpoint.volume, podTemplate.volumeMounts) whose mount point does not exist here is
listed as not checked instead of failing (check(..., here=True)). Everywhere else every path must be readable.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from llm_operator.api.v1alpha1 import SFT_FORMATS

from .data import data_path
from .sft.dataset import DataRowError, example_at
from .sft.dataset import rows as sft_rows
from .sft.examples import RowError, check_messages, check_prompt_completion
from .sft.tokenizer import HFTokenizer, load_tokenizer, tokenizer_config_path, tokenizer_json
from .evaluation import held_out_counts

PREFLIGHT_EXIT = 5  # `llm-train launch`: the job's input is bad; restarting cannot help
PREFLIGHT_EXAMPLES = 1000  # SFT rows rendered and tokenized per file (all are checked for their fields)
MAX_ROW_PROBLEMS = 10  # per file: a file with a systematic problem lists its first rows, not all of them


class PreflightError(ValueError):
    """Bad input, one line per problem, each naming the field and the file."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the job's input is not usable:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)  # paths on volumes that only the pods mount (validate)
    vocab_size: Optional[int] = None
    seq_len: Optional[int] = None


def check(spec, *, here: bool = False) -> Report:
    """Run every check; raise PreflightError listing all problems. here=True: skip paths on volumes not mounted here."""
    report = Report()
    _Checks(spec, report, here).run()
    if report.problems:
        raise PreflightError(report.problems)
    return report


class _Checks:
    def __init__(self, spec, report: Report, here: bool):
        self.spec, self.report, self.here = spec, report, here
        self.mounts = _pod_only_mounts(spec) if here else []

    def problem(self, message: str) -> None:
        self.report.problems.append(message)

    def unreachable(self, path: str, what: str) -> bool:
        """True (and noted) when path lies on a volume only the pods mount and that is not here."""
        for mount in self.mounts:
            if os.path.normpath(path).startswith(os.path.normpath(mount) + os.sep) or os.path.normpath(path) == os.path.normpath(mount):
                self.report.not_checked.append(f"{what}: {path} (on a volume mounted at {mount} in the pods)")
                return True
        return False

    def run(self) -> None:
        spec = self.spec
        vocab, seq_len = self.model_sizes()
        self.report.vocab_size, self.report.seq_len = vocab, seq_len
        self.tokenizer(vocab)
        self.lora_targets(seq_len)
        if spec.data.format != "synthetic" and seq_len is not None:
            files = self.data_files("data.paths", spec.data.paths)
            windows = self.token_files("data.paths", files, seq_len)
            validation = spec.data.validation
            if validation is not None and validation.paths:
                held = self.data_files("data.validation.paths", validation.paths)
                shared = sorted({os.path.realpath(f) for f in held} & {os.path.realpath(f) for f in files})
                if shared:
                    self.problem(f"data.validation.paths: {', '.join(shared)} also in data.paths: held-out data must never be trained on")
                self.token_files("data.validation.paths", held, seq_len)
            elif validation is not None and validation.fraction is not None and windows is not None and spec.data.format == "tokens":
                if not sum(held_out_counts(windows, validation.fraction)):
                    self.problem(f"data.validation.fraction: {validation.fraction} of {', '.join(files)} holds out no window of "
                                 f"model.seqLen + 1 = {seq_len + 1} tokens (a file's only window is never held out)")

    # -- model
    def lora_targets(self, seq_len: Optional[int]) -> None:
        """training.lora.targetModules against the model's module names (a model on the meta device: no weights)."""
        lora, m = self.spec.training.lora, self.spec.model_spec
        if lora is None or seq_len is None or not m.hugging_face_path:  # seq_len None: the model's config was not readable
            return
        from .hf import config_from_hf
        from .lora import check_targets

        config = os.path.join(m.hugging_face_path, "config.json")
        with open(config) as f:
            cfg = config_from_hf(json.load(f), seq_len=m.seq_len)
        try:
            check_targets(cfg, lora.target_modules)
        except ValueError as exc:
            self.problem(f"{exc} ({config})")

    def model_sizes(self) -> tuple[Optional[int], Optional[int]]:
        """(vocab size, seq len) of the model; from config.json for a Hugging Face model."""
        m = self.spec.model_spec
        if not m.hugging_face_path:
            r = m.resolved()
            return r["vocabSize"], r["seqLen"]
        path = m.hugging_face_path
        if self.unreachable(path, "model.huggingFacePath"):
            return None, None
        if not os.path.isdir(path):
            self.problem(f"model.huggingFacePath: {path}: no such directory")
            return None, None
        config = os.path.join(path, "config.json")
        try:
            with open(config) as f:
                hf = json.load(f)
        except FileNotFoundError:
            self.problem(f"model.huggingFacePath: {config}: missing (a Hugging Face model directory holds config.json)")
            return None, None
        except (OSError, ValueError) as exc:
            self.problem(f"model.huggingFacePath: {config}: not readable JSON: {exc}")
            return None, None
        self.weights(path)
        from .hf import config_from_hf

        try:
            cfg = config_from_hf(hf, seq_len=m.seq_len)
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            name = "model.seqLen" if "seqLen" in what else "model.huggingFacePath"
            self.problem(f"{name}: {config}: {what}")
            return hf.get("vocab_size"), None
        return cfg.vocab_size, cfg.seq_len

    def weights(self, path: str) -> None:
        single = os.path.join(path, "model.safetensors")
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as exc:
                self.problem(f"model.huggingFacePath: {index}: not a safetensors index (weight_map): {exc}")
                return
            files = [os.path.join(path, s) for s in shards]
        elif os.path.isfile(single):
            files = [single]
        else:
            self.problem(f"model.huggingFacePath: {path}: no weights (model.safetensors or model.safetensors.index.json; "
                         "only safetensors are read)")
            return
        from safetensors import safe_open

        for name in files:
            try:
                with safe_open(name, framework="pt") as f:  # reads the header only
                    f.keys()
            except FileNotFoundError:
                self.problem(f"model.huggingFacePath: {name}: missing (named in model.safetensors.index.json)")
            except Exception as exc:  # safetensors raises its own SafetensorError
                self.problem(f"model.huggingFacePath: {name}: not a safetensors file: {exc}")

    # -- tokenizer
    def tokenizer(self, vocab: Optional[int]) -> None:
        data = self.spec.data
        if not data.tokenizer:
            return
        path = data_path(data, data.tokenizer)
        if self.unreachable(path, "data.tokenizer"):
            return
        directory, path = os.path.isdir(path), tokenizer_json(path)
        if not os.path.isfile(path):
            self.problem(f"data.tokenizer: {path}: no such file" + (" (a tokenizer directory holds tokenizer.json)" if directory else ""))
            return
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(path)
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            self.problem(f"data.tokenizer: {path}: not a tokenizers tokenizer.json: {exc}")
            return
        size = tok.get_vocab_size()
        if vocab is not None and size > vocab:
            name = "model.vocabSize" if not self.spec.model_spec.hugging_face_path else "model.huggingFacePath (config.json vocab_size)"
            self.problem(f"{name}: {vocab} is smaller than the tokenizer's {size} ids (data.tokenizer: {path})")
        limit = int(np.iinfo(np.dtype(data.token_dtype)).max)
        if size - 1 > limit:
            self.problem(f"data.tokenDtype: {data.token_dtype} cannot hold the tokenizer's {size} ids (data.tokenizer: {path}); use uint32")

    # -- data files
    def data_files(self, name: str, patterns: list[str]) -> list[str]:
        data, found = self.spec.data, []
        for pattern in patterns:
            full = data_path(data, pattern)
            if self.unreachable(full, name):
                continue
            matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
            files = [m for m in matches if os.path.isfile(m)]
            if not files:
                self.problem(f"{name}: no file matches {pattern!r} (looked for {full})")
            elif len(files) < len(matches):
                self.problem(f"{name}: {', '.join(sorted(set(matches) - set(files)))}: not a file")
            found += files
        return found

    def token_files(self, name: str, files: list[str], seq_len: int) -> Optional[list[int]]:
        """Check the files; the number of seqLen + 1 windows in each (tokens format), else None."""
        data = self.spec.data
        if data.format != "tokens":
            for path in files:
                self.text_file(name, path)
            return None
        itemsize = np.dtype(data.token_dtype).itemsize
        windows, sizes = [], []
        for path in files:
            try:
                size = os.path.getsize(path)
            except OSError as exc:
                self.problem(f"{name}: {path}: {exc.strerror or exc}")
                continue
            if size % itemsize:
                self.problem(f"{name}: {path}: {size} bytes is not a whole number of {data.token_dtype} tokens ({itemsize} bytes each; "
                             "data.tokenDtype): not a token file of this dtype, or truncated")
                continue
            tokens = size // itemsize
            sizes.append(tokens)
            windows.append(max(0, (tokens - 1) // seq_len))
        if files and len(sizes) == len(files) and not sum(windows):
            self.problem(f"model.seqLen: {seq_len}: {name} ({', '.join(files)}) hold{'s' if len(files) == 1 else ''} {sum(sizes)} tokens in all, "
                         f"no file has seqLen + 1 = {seq_len + 1}")
        return windows

    def text_file(self, name: str, path: str) -> None:
        data = self.spec.data
        if data.format in SFT_FORMATS:
            return self.sft_file(name, path)
        try:
            with open(path, encoding="utf-8") as f:
                if data.format != "jsonl":
                    f.read(4096)
                    return
                for number, line in enumerate(f, 1):
                    if line.strip():
                        obj: Any = json.loads(line)
                        if not isinstance(obj, dict) or data.text_field not in obj:
                            self.problem(f"{name}: {path}:{number}: no field {data.text_field!r} (data.textField)")
                        return
        except UnicodeDecodeError as exc:
            self.problem(f"{name}: {path}: not UTF-8 text: {exc}")
        except ValueError as exc:
            self.problem(f"{name}: {path}: first line is not JSON: {exc}")
        except OSError as exc:
            self.problem(f"{name}: {path}: {exc.strerror or exc}")


    # -- supervised fine-tuning (issue 21)
    @functools.cached_property
    def sft_tokenizer(self) -> Optional[HFTokenizer]:
        """The tokenizer that renders the rows; None (reported) if there is none to use."""
        data = self.spec.data
        path = data_path(data, data.tokenizer)
        if self.unreachable(path, "data.tokenizer"):
            return None
        try:
            tok = load_tokenizer(path)
        except ValueError:
            return None  # tokenizer() reported it
        if data.format == "chat" and not tok.chat_template:
            self.problem(f"data.tokenizer: {tokenizer_config_path(path) or path}: no chat_template to render data.format chat with "
                         "(a Hugging Face tokenizer directory whose tokenizer_config.json has one)")
            return None
        return tok

    def sft_file(self, name: str, path: str) -> None:
        data = self.spec.data
        loss_on = self.spec.training.loss_on or "assistant"
        tok = self.sft_tokenizer
        problems = 0
        try:
            for count, (number, obj) in enumerate(sft_rows(path)):
                try:
                    if tok is not None and count < PREFLIGHT_EXAMPLES:
                        example_at(tok, data.format, loss_on, name, path, number, obj)
                    elif data.format == "chat":
                        check_messages(obj, need_assistant=loss_on == "assistant")
                    else:
                        check_prompt_completion(obj)
                except RowError as exc:
                    self.problem(f"{name}: {path}:{number}: {exc}")
                    problems += 1
                except DataRowError as exc:
                    self.problem(str(exc))
                    problems += 1
                if problems == MAX_ROW_PROBLEMS:
                    self.problem(f"{name}: {path}: stopped after {MAX_ROW_PROBLEMS} bad rows")
                    return
        except DataRowError as exc:  # a line that is not JSON
            self.problem(f"{name}: {exc}")
        except UnicodeDecodeError as exc:
            self.problem(f"{name}: {path}: not UTF-8 text: {exc}")
        except OSError as exc:
            self.problem(f"{name}: {path}: {exc.strerror or exc}")


def _pod_only_mounts(spec) -> list[str]:
    """Mount points of the volumes the spec gives its pods that do not exist on this machine."""
    mounts = []
    if spec.data.volume:
        mounts.append(spec.data.mount_path)
    if spec.checkpoint.volume:
        mounts.append(spec.checkpoint.mount_path)
    mounts += [m.get("mountPath") for m in spec.pod_template.volume_mounts if isinstance(m.get("mountPath"), str)]
    return [m for m in mounts if m and not os.path.exists(m)]
