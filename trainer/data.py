"""Training data: sources of fixed-length samples, a resumable sampler, and a prefetching loader.

A *source* maps a sample number to seq_len + 1 tokens (inputs and shifted targets):
  synthetic  deterministic "phrase" sequences from the seed: learnable, so the loss visibly falls
  tokens     np.memmap over uint16/uint32 token files, non-overlapping windows of seq_len + 1
  text/jsonl tokenized once per node with a tokenizers tokenizer.json into a token file, then as tokens

The *sampler* is pure arithmetic: global micro-batch n holds samples [n·W·B, (n+1)·W·B) of an epoch-wise
permutation (W ranks, B micro batch), rank r takes its own B of them. Its whole state is n, saved in the
checkpoint, so a resumed run sees exactly the batches the uninterrupted run would have seen.

The *loader* builds batches in a background thread (pinned memory on GPU) a few micro-batches ahead, so
reading and host-to-device copies stay off the training step's critical path.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import math
import os
import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np
import torch

PHRASES, PHRASE_LEN = 64, 8
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


class Source(Protocol):
    seq_len: int

    @property
    def num_samples(self) -> Optional[int]: ...  # None: unbounded

    def sample(self, index: int) -> np.ndarray: ...


# ---------------------------------------------------------------------------------------- sources
class SyntheticSource:
    """Concatenations of PHRASES fixed random phrases of PHRASE_LEN tokens, at a random offset.

    Within a phrase every token follows from its predecessors, so the best loss is about
    ln(PHRASES) / PHRASE_LEN ≈ 0.5 nats, far below ln(vocab) at initialization.
    """

    num_samples = None

    def __init__(self, vocab_size: int, seq_len: int, seed: int):
        self.seq_len, self.seed = seq_len, seed
        self.phrases = np.random.default_rng([seed, 0x5EED]).integers(0, vocab_size, (PHRASES, PHRASE_LEN))
        self.n_phrases = math.ceil((seq_len + 1) / PHRASE_LEN) + 1

    def sample(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        tokens = self.phrases[rng.integers(0, PHRASES, self.n_phrases)].reshape(-1)
        start = int(rng.integers(0, PHRASE_LEN))
        return tokens[start:start + self.seq_len + 1]


class TokenFileSource:
    """Non-overlapping windows of seq_len + 1 tokens in each memory-mapped file (pages are read on demand)."""

    def __init__(self, paths: Sequence[str], dtype: str, seq_len: int):
        self.seq_len = seq_len
        self.files = [np.memmap(p, dtype=np.dtype(dtype), mode="r") for p in paths]
        counts = [max(0, (len(f) - 1) // seq_len) for f in self.files]
        self.starts = np.cumsum([0] + counts)
        self.num_samples = int(self.starts[-1])
        if not self.num_samples:
            raise ValueError(f"data: {len(paths)} token file(s) hold fewer than seq_len + 1 = {seq_len + 1} tokens")

    def sample(self, index: int) -> np.ndarray:
        f = int(np.searchsorted(self.starts, index, side="right")) - 1
        offset = (index - int(self.starts[f])) * self.seq_len
        return np.asarray(self.files[f][offset:offset + self.seq_len + 1])


def data_path(data, path: str) -> str:
    """A data.paths entry or data.tokenizer: relative ones are taken from data.mountPath when data.volume is set,
    else from the working directory (local runs)."""
    return path if os.path.isabs(path) or not data.volume else os.path.join(data.mount_path, path)


def tokenizer_json(path: str) -> str:
    """The tokenizer.json of data.tokenizer: the file, or the one in a Hugging Face tokenizer directory."""
    return os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path


def resolve_paths(data) -> list[str]:
    """data.paths with globs expanded, each pattern's matches sorted."""
    out: list[str] = []
    for pattern in data.paths:
        full = data_path(data, pattern)
        matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        missing = [m for m in matches if not os.path.isfile(m)]
        if not matches or missing:
            raise FileNotFoundError(f"data.paths: no file matches {pattern!r} (looked for {full!r})")
        out += matches
    return out


def _documents(path: str, fmt: str, text_field: str, lines_per_chunk: int = 2048) -> Iterator[tuple[bool, list[str]]]:
    """(starts_new_document, texts) chunks: jsonl one document per line; text one document per file."""
    with open(path, encoding="utf-8") as f:
        if fmt == "jsonl":
            for number, line in enumerate(f, 1):
                if line.strip():
                    obj = json.loads(line)
                    if text_field not in obj:
                        raise ValueError(f"{path}:{number}: no field {text_field!r} (data.textField)")
                    yield True, [obj[text_field]]
            return
        chunk: list[str] = []
        first = True
        for line in f:
            chunk.append(line)
            if len(chunk) == lines_per_chunk:
                yield first, chunk
                first, chunk = False, []
        if chunk or first:
            yield first, chunk


def tokenize_to_file(paths: Sequence[str], fmt: str, tokenizer_path: str, text_field: str, dtype: str, out: Path) -> Path:
    """Tokenize text/jsonl files into one token file (EOS between documents if the tokenizer has one)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_path)
    eos = next((i for i in map(tokenizer.token_to_id, EOS_CANDIDATES) if i is not None), None)
    limit = np.iinfo(np.dtype(dtype)).max
    if tokenizer.get_vocab_size() - 1 > limit:
        raise ValueError(f"data.tokenDtype {dtype} cannot hold the tokenizer's {tokenizer.get_vocab_size()} ids")
    # unique across pods too: PIDs repeat between containers, and the cache may be on a shared volume
    tmp = out.with_name(f"{out.name}.tmp-{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        started = False
        for path in paths:
            for new_doc, texts in _documents(path, fmt, text_field):
                if new_doc and started and eos is not None:
                    f.write(np.asarray([eos], dtype=dtype).tobytes())
                for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
                    f.write(np.asarray(enc.ids, dtype=dtype).tobytes())
                started = True
    os.replace(tmp, out)
    return out


def tokenized_cache_path(paths: Sequence[str], fmt: str, tokenizer: str, text_field: str, dtype: str, cache_dir: Path) -> Path:
    key = json.dumps([[(p, os.path.getsize(p), os.path.getmtime(p)) for p in paths], fmt, tokenizer,
                      os.path.getsize(tokenizer), text_field, dtype])
    return cache_dir / f"tokens-{hashlib.sha256(key.encode()).hexdigest()[:16]}.{dtype}"


# ---------------------------------------------------------------------------------------- sampler
@dataclass(eq=False)
class Sampler:
    """Which samples rank `rank` reads for global micro-batch n; state = the next n."""

    num_samples: Optional[int]
    seed: int
    rank: int
    world_size: int
    micro_batch: int
    next_micro_batch: int = 0

    def sample_indices(self, n: int) -> list[int]:
        first = (n * self.world_size + self.rank) * self.micro_batch
        return [self.permute(g) for g in range(first, first + self.micro_batch)]

    def permute(self, g: int) -> int:
        """Global sample number -> source index: an affine permutation per epoch (O(1) memory at any size)."""
        if self.num_samples is None:
            return g
        n = self.num_samples
        epoch, pos = divmod(g, n)
        a, b = self._affine(epoch)
        return (a * pos + b) % n

    @functools.lru_cache(maxsize=4)  # noqa: B019  (a few sources live as long as the run: nothing leaks)
    def _affine(self, epoch: int) -> tuple[int, int]:
        n, rng = self.num_samples, np.random.default_rng([self.seed, epoch])
        assert n is not None  # only bounded sources are shuffled
        a = int(rng.integers(1, n)) if n > 2 else 1
        while math.gcd(a, n) != 1:
            a = a % (n - 1) + 1
        return a, int(rng.integers(0, n))

    def state_dict(self) -> dict:
        return {"next_micro_batch": self.next_micro_batch, "world_size": self.world_size, "micro_batch": self.micro_batch}

    def load_state_dict(self, state: dict) -> None:
        if (state["world_size"], state["micro_batch"]) != (self.world_size, self.micro_batch):
            # same global sample stream under a different layout: continue after the samples already consumed
            consumed = state["next_micro_batch"] * state["world_size"] * state["micro_batch"]
            per = self.world_size * self.micro_batch
            self.next_micro_batch = -(-consumed // per)
        else:
            self.next_micro_batch = state["next_micro_batch"]


# ----------------------------------------------------------------------------------------- loader
class Loader:
    """Iterator of (inputs, targets) int64 tensors on `device`, prefetched by a background thread."""

    def __init__(self, source: Source, sampler: Sampler, device: torch.device, vocab_size: int, prefetch: int = 4):
        self.source, self.sampler, self.device, self.prefetch = source, sampler, device, prefetch
        self.vocab_size = vocab_size
        self.pin = device.type == "cuda"
        self._queue: Optional[queue.Queue] = None
        self._stop = threading.Event()

    def _batch(self, n: int) -> torch.Tensor:
        rows = np.stack([self.source.sample(i) for i in self.sampler.sample_indices(n)]).astype(np.int64)
        if rows.max() >= self.vocab_size:
            raise ValueError(f"data: token id {rows.max()} in micro-batch {n} is beyond model.vocabSize {self.vocab_size}")
        t = torch.from_numpy(rows)
        return t.pin_memory() if self.pin else t

    def _produce(self, start: int, q: queue.Queue, stop: threading.Event) -> None:
        n = start
        while not stop.is_set():
            item: Any
            try:
                item = self._batch(n)
            except BaseException as exc:  # re-raised in the training thread
                item = exc
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    pass
            if isinstance(item, BaseException):
                return
            n += 1

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        threading.Thread(target=self._produce, args=(self.sampler.next_micro_batch, self._queue, self._stop),
                         daemon=True, name="llmtrain-data").start()

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._queue is None:
            self._start()
        assert self._queue is not None
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self.sampler.next_micro_batch += 1
        batch = item.to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def close(self) -> None:
        self._stop.set()
        self._queue = None

    def skip(self, micro_batches: int) -> None:
        """Advance without reading (a pipeline stage in the middle, which needs no data but keeps the position)."""
        assert self._queue is None, "skip() on a loader that is reading"
        self.sampler.next_micro_batch += micro_batches

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.sampler.load_state_dict(state)


def build_source(data, vocab_size: int, seq_len: int, seed: int, cache_dir: Path,
                 tokenize_here: bool = True, barrier: Callable[[], None] = lambda: None) -> Source:
    """The source for a DataSpec. Text/jsonl is tokenized by the ranks with tokenize_here (one per node),
    the others wait in barrier() and then map the cached token file."""
    if data.format == "synthetic":
        return SyntheticSource(vocab_size, seq_len, seed)
    paths = resolve_paths(data)
    if data.format == "tokens":
        source = TokenFileSource(paths, data.token_dtype, seq_len)
    else:
        tokenizer = tokenizer_json(data_path(data, data.tokenizer))
        cache = tokenized_cache_path(paths, data.format, tokenizer, data.text_field, data.token_dtype, cache_dir)
        if tokenize_here and not cache.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            tokenize_to_file(paths, data.format, tokenizer, data.text_field, data.token_dtype, cache)
        barrier()
        source = TokenFileSource([str(cache)], data.token_dtype, seq_len)
    return source


def build_loader(source: Source, *, seed: int, rank: int, world_size: int, micro_batch: int,
                 device: torch.device, vocab_size: int) -> Loader:
    return Loader(source, Sampler(source.num_samples, seed, rank, world_size, micro_batch), device, vocab_size)
