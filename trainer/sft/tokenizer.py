"""A Hugging Face tokenizer as the trainer reads it: tokenizer.json (the `tokenizers` library) plus tokenizer_config.json.

data.tokenizer names either a tokenizer.json file or a directory holding one; a directory's tokenizer_config.json
gives the chat template and the special tokens (bos_token, eos_token, pad_token, ...) that the template sees and
that transformers' apply_chat_template passes it. Special tokens are strings there or AddedToken dicts ({content}).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ..data import EOS_CANDIDATES, tokenizer_json

__all__ = ["HFTokenizer", "load_tokenizer", "tokenizer_config_path", "tokenizer_json"]  # tokenizer_json: data.py's

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def tokenizer_config_path(path: str) -> Optional[str]:
    """The tokenizer_config.json beside data.tokenizer, if it is a directory that has one."""
    config = os.path.join(path, "tokenizer_config.json")
    return config if os.path.isdir(path) and os.path.isfile(config) else None


def _token_string(value: Any) -> Optional[str]:
    if isinstance(value, dict):  # AddedToken as transformers serializes it
        value = value.get("content")
    return value if isinstance(value, str) else None


@dataclass
class HFTokenizer:
    path: str  # data.tokenizer as given (file or directory)
    tokenizer: Any  # tokenizers.Tokenizer
    chat_template: Optional[str] = None
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token -> "<s>", ...

    def token_id(self, name: str) -> Optional[int]:
        token = self.special_tokens.get(name)
        return self.tokenizer.token_to_id(token) if token is not None else None

    @property
    def eos_id(self) -> Optional[int]:
        """tokenizer_config.json's eos_token, else the first end-of-text token the vocabulary has."""
        own = self.token_id("eos_token")
        if own is not None:
            return own
        return next((i for i in map(self.tokenizer.token_to_id, EOS_CANDIDATES) if i is not None), None)

    @property
    def pad_id(self) -> int:
        """What fills a sequence's tail: pad_token, else eos, else 0 (never a target, so any id will do)."""
        pad = self.token_id("pad_token")
        return pad if pad is not None else (self.eos_id or 0)

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and their character offsets, without the tokenizer's own special tokens (as apply_chat_template)."""
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets


def load_tokenizer(path: str) -> HFTokenizer:
    """Raises ValueError naming data.tokenizer and the file for anything unreadable."""
    from tokenizers import Tokenizer

    json_path = tokenizer_json(path)
    try:
        tok = Tokenizer.from_file(json_path)
    except Exception as exc:  # tokenizers raises a bare Exception for a missing or malformed file
        raise ValueError(f"data.tokenizer: {json_path}: not a tokenizers tokenizer.json: {exc}") from None
    config_path = tokenizer_config_path(path)
    if config_path is None:
        return HFTokenizer(path, tok)
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"data.tokenizer: {config_path}: not readable JSON: {exc}") from None
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates, as transformers writes several: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    if template is not None and not isinstance(template, str):
        raise ValueError(f"data.tokenizer: {config_path}: chat_template is not a string")
    if template is None:  # transformers 4.43+ may keep it beside the config
        jinja = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(jinja):
            with open(jinja, encoding="utf-8") as f:
                template = f.read()
    specials = {k: s for k in SPECIAL_TOKEN_KEYS if (s := _token_string(config.get(k))) is not None}
    return HFTokenizer(path, tok, template, specials)
