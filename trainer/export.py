"""What the exported Hugging Face directory says besides the weights: token ids, context length, tokenizer.

Token ids are the ones the model was trained with:
  text/jsonl data   the tokenizer's end-of-text token, which the trainer puts between documents, is eos and bos
                    (every document in training followed it; the trainer never adds the tokenizer's own <s>)
  HF start          the source config.json's bos/eos/pad_token_id (its token files came from its tokenizer)
  tokens + tokenizer the tokenizer's bos/eos/pad tokens, if it has them
  otherwise         none: synthetic or bare token data has no special tokens, and null says so
pad is the tokenizer's pad token where it has one (training never pads: every window is full).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from .data import EOS_CANDIDATES, data_path
from .hf import SpecialTokens

BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")
PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                      "tokenizer.model")


def _first_id(tokenizer, candidates: tuple[str, ...]) -> Optional[int]:
    return next((i for i in map(tokenizer.token_to_id, candidates) if i is not None), None)


def _source_config(spec) -> dict[str, Any]:
    path = spec.model_spec.hugging_face_path
    return json.loads((Path(path) / "config.json").read_text()) if path else {}


def _int_or_none(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def trained_special_tokens(spec, vocab_size: int) -> SpecialTokens:
    data, source = spec.data, _source_config(spec)
    tokens = SpecialTokens()
    if data.tokenizer:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(data_path(data, data.tokenizer))
        eos, pad = _first_id(tok, EOS_CANDIDATES), _first_id(tok, PAD_CANDIDATES)
        if data.format in ("text", "jsonl"):
            tokens = SpecialTokens(bos=eos, eos=eos, pad=pad)
        elif not source:
            tokens = SpecialTokens(bos=_first_id(tok, BOS_CANDIDATES) or eos, eos=eos, pad=pad)
    if source and data.format not in ("text", "jsonl"):
        tokens = SpecialTokens(*(_int_or_none(source.get(k)) for k in ("bos_token_id", "eos_token_id", "pad_token_id")))
    # an id the model cannot produce is no id of this model
    return SpecialTokens(*(i if i is not None and 0 <= i < vocab_size else None for i in (tokens.bos, tokens.eos, tokens.pad)))


def source_max_positions(spec) -> Optional[int]:
    """The source model's context length when fine-tuning (llama's max_position_embeddings), else None."""
    return _int_or_none(_source_config(spec).get("max_position_embeddings"))


def copy_tokenizer(spec, model_dir: Path) -> None:
    """data.tokenizer as tokenizer.json, else the HF start's tokenizer files, so that the directory is usable as is."""
    if spec.data.tokenizer:
        shutil.copy(data_path(spec.data, spec.data.tokenizer), model_dir / "tokenizer.json")
        return
    if spec.model_spec.hugging_face_path:
        for name in HF_TOKENIZER_FILES:
            source = os.path.join(spec.model_spec.hugging_face_path, name)
            if os.path.isfile(source):
                shutil.copy(source, model_dir / name)
