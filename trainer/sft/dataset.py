"""chat / promptCompletion jsonl files -> examples (tokenized once per node into a cache) -> a source of packed rows.

The cache (.npz) holds every example untruncated: ids and is-target concatenated, and each example's offset, so
that seqLen and packing do not change it. SFTSource lays the examples out in rows (packing.py) when it is built
(a deterministic function of the cache, the same on every rank) and gives row i as a (3, seqLen + 1) array.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..data import data_path, resolve_paths
from .chat_template import TemplateRenderError
from .examples import Example, RowError, row_example
from .packing import layout, pack
from .tokenizer import HFTokenizer, load_tokenizer, tokenizer_config_path, tokenizer_json


class DataRowError(ValueError):
    """A row that cannot be trained on: the field, the file, the row and what is wrong."""


def rows(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) of every non-blank line; DataRowError for one that is not JSON."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except ValueError as exc:
                    raise DataRowError(f"{path}:{number}: not JSON: {exc}") from None


def example_at(tok: HFTokenizer, fmt: str, loss_on: str, field: str, path: str, number: int, obj: Any) -> Example:
    try:
        return row_example(tok, fmt, obj, loss_on)
    except RowError as exc:
        raise DataRowError(f"{field}: {path}:{number}: {exc}") from None
    except TemplateRenderError as exc:
        raise DataRowError(f"data.tokenizer: {tokenizer_config_path(tok.path) or tok.path}: {exc} (row {path}:{number}, {field})") from None


def read_examples(paths: Sequence[str], tok: HFTokenizer, fmt: str, loss_on: str, field: str = "data.paths") -> list[Example]:
    return [example_at(tok, fmt, loss_on, field, path, number, obj) for path in paths for number, obj in rows(path)]


def cache_path(paths: Sequence[str], fmt: str, tokenizer: str, loss_on: str, cache_dir: Path) -> Path:
    files = [tokenizer_json(tokenizer)] + ([c] if (c := tokenizer_config_path(tokenizer)) else [])
    key = json.dumps([[(p, os.path.getsize(p), os.path.getmtime(p)) for p in [*paths, *files]], fmt, tokenizer, loss_on, 1])
    return cache_dir / f"sft-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def write_cache(examples: Sequence[Example], out: Path) -> None:
    offsets = np.cumsum([0] + [len(e.ids) for e in examples]).astype(np.int64)
    ids = np.concatenate([e.ids for e in examples]) if examples else np.zeros(0, np.int64)
    targets = np.concatenate([e.targets for e in examples]) if examples else np.zeros(0, bool)
    # unique across pods too: PIDs repeat between containers, and the cache may be on a shared volume
    tmp = out.with_name(f"{out.name}.tmp-{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz")
    np.savez(tmp, ids=ids.astype(np.uint32), targets=targets, offsets=offsets)
    os.replace(tmp, out)


@dataclass
class SFTSource:
    """Rows of examples: sample(i) is (3, seq_len + 1) int64 (ids, is-target, segment), laid out when read (rows are not
    kept: only the examples, about 5 bytes a token); target_count(i) is its number of trained positions."""

    seq_len: int
    ids: np.ndarray  # every example's tokens, concatenated
    targets: np.ndarray  # bool, the same length
    offsets: np.ndarray  # example k is [offsets[k], offsets[k + 1])
    groups: list[list[int]]  # the examples of each row
    target_counts: np.ndarray  # (rows,)
    pad_id: int
    truncated: int  # examples cut to seq_len + 1 tokens

    @property
    def num_samples(self) -> Optional[int]:
        return len(self.groups)

    def sample(self, index: int) -> np.ndarray:
        o = self.offsets
        return layout([(self.ids[o[k]:o[k + 1]].astype(np.int64), self.targets[o[k]:o[k + 1]]) for k in self.groups[index]],
                      self.seq_len + 1, self.pad_id)

    def target_count(self, index: int) -> int:
        return int(self.target_counts[index])

    @classmethod
    def from_arrays(cls, ids: np.ndarray, targets: np.ndarray, offsets: np.ndarray, seq_len: int, packing: bool,
                    pad_id: int) -> "SFTSource":
        width = seq_len + 1
        if len(offsets) < 2:
            raise ValueError("data.paths: the files hold no examples")
        lengths = np.diff(offsets)
        kept = np.minimum(lengths, width)  # what of each example a row holds
        groups = pack(kept.tolist(), width) if packing else [[k] for k in range(len(lengths))]
        # trained positions of an example: its targets after its first token (nothing predicts that one), within what is kept
        running = np.concatenate([[0], np.cumsum(targets, dtype=np.int64)])
        per_example = running[offsets[:-1] + kept] - running[offsets[:-1] + 1]
        counts = np.asarray([per_example[g].sum() for g in groups], dtype=np.int64)
        return cls(seq_len, ids, targets, offsets, groups, counts, pad_id, int((lengths > width).sum()))


def load_source(path: Path, seq_len: int, packing: bool, pad_id: int) -> SFTSource:
    with np.load(path) as z:
        return SFTSource.from_arrays(z["ids"], z["targets"], z["offsets"], seq_len, packing, pad_id)


def build_sft_source(data, loss_on: str, seq_len: int, cache_dir: Path, *, tokenize_here: bool = True,
                     barrier: Callable[[], None] = lambda: None) -> SFTSource:
    """Tokenized by the ranks with tokenize_here (one per node); the others wait in barrier() and read the cache."""
    paths = resolve_paths(data)
    tokenizer = data_path(data, data.tokenizer)
    tok = load_tokenizer(tokenizer)
    cache = cache_path(paths, data.format, tokenizer, loss_on, cache_dir)
    if tokenize_here and not cache.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            write_cache(read_examples(paths, tok, data.format, loss_on), cache)
        except BaseException:
            barrier()  # the other ranks stop waiting (and find no cache); this rank reports the row
            raise
    barrier()
    return load_source(cache, seq_len, data.packing, tok.pad_id)
