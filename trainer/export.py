"""What the exported Hugging Face directory says besides the weights: token ids, context length, tokenizer.

Token ids are the ones the model was trained with:
  text/jsonl data   the tokenizer's end-of-text token, which the trainer puts between documents, is eos and bos
                    (every document in training followed it; the trainer never adds the tokenizer's own <s>)
  HF start          the source config.json's bos/eos/pad_token_id (its token files came from its tokenizer)
  tokens + tokenizer the tokenizer's bos/eos/pad tokens, if it has them
  chat/promptCompletion  a tokenizer directory's tokenizer_config.json bos/eos/pad tokens (eos ends each trained answer),
                    else those the vocabulary has
  otherwise         none: synthetic or bare token data has no special tokens, and null says so
pad is the tokenizer's pad token where it has one (training never pads: every window is full).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from llm_operator.api.v1alpha1 import SFT_FORMATS

from .data import EOS_CANDIDATES, data_path
from .hf import SpecialTokens
from .sft.tokenizer import load_tokenizer, tokenizer_json

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
    if data.tokenizer and data.format in SFT_FORMATS:
        hf = load_tokenizer(data_path(data, data.tokenizer))
        own = [hf.token_id(k) for k in ("bos_token", "eos_token", "pad_token")]
        tokens = SpecialTokens(own[0], hf.eos_id, own[2] if own[2] is not None else _first_id(hf.tokenizer, PAD_CANDIDATES))
    elif data.tokenizer:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer_json(data_path(data, data.tokenizer)))
        eos, pad = _first_id(tok, EOS_CANDIDATES), _first_id(tok, PAD_CANDIDATES)
        if data.format in ("text", "jsonl"):
            tokens = SpecialTokens(bos=eos, eos=eos, pad=pad)
        elif not source:
            tokens = SpecialTokens(bos=_first_id(tok, BOS_CANDIDATES) or eos, eos=eos, pad=pad)
    if source and data.format not in ("text", "jsonl", *SFT_FORMATS):
        tokens = SpecialTokens(*(_int_or_none(source.get(k)) for k in ("bos_token_id", "eos_token_id", "pad_token_id")))
    # an id the model cannot produce is no id of this model
    return SpecialTokens(*(i if i is not None and 0 <= i < vocab_size else None for i in (tokens.bos, tokens.eos, tokens.pad)))


def source_max_positions(spec) -> Optional[int]:
    """The source model's context length when fine-tuning (llama's max_position_embeddings), else None."""
    return _int_or_none(_source_config(spec).get("max_position_embeddings"))


def copy_tokenizer(spec, model_dir: Path) -> None:
    """data.tokenizer as tokenizer.json (a directory: its tokenizer files, chat template included), else the HF start's
    tokenizer files, so that the directory is usable as is."""
    tokenizer = data_path(spec.data, spec.data.tokenizer) if spec.data.tokenizer else None
    if tokenizer and not os.path.isdir(tokenizer):
        shutil.copy(tokenizer, model_dir / "tokenizer.json")
        return
    directory = tokenizer or spec.model_spec.hugging_face_path
    if directory:
        for name in (*HF_TOKENIZER_FILES, "chat_template.jinja"):
            source = os.path.join(directory, name)
            if os.path.isfile(source):
                shutil.copy(source, model_dir / name)
