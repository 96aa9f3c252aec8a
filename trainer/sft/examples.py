"""One jsonl row -> one training example: token ids and which of them are targets.

chat              {"messages": [{"role", "content"}, ...]} rendered with the tokenizer's chat template. The targets
                  (training.lossOn assistant) are the assistant turns with their end-of-turn token: the template's
                  {% generation %} blocks where it has them (as transformers' return_assistant_tokens_mask), else
                  each assistant turn's span found by rendering the conversation up to that turn with and without it
                  (what the turn adds to the text after the generation prompt; Axolotl's way).
promptCompletion  {"prompt", "completion"}: prompt tokens, then completion tokens and the end-of-text token (TRL's
                  standard prompt-completion); the targets are the completion and that token.
lossOn all        every token is a target.

Bad rows raise RowError with what is wrong with the row; the caller adds the field, file and row number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .chat_template import TemplateRenderError, has_generation_markers, render
from .tokenizer import HFTokenizer

ROLES = ("system", "user", "assistant", "tool")


class RowError(ValueError):
    pass


@dataclass
class Example:
    ids: np.ndarray  # int64 token ids
    targets: np.ndarray  # bool, same length: the token is trained on


def check_messages(obj: Any, *, need_assistant: bool) -> list[dict]:
    """The row's messages, or RowError saying what is wrong with them."""
    if not isinstance(obj, dict) or "messages" not in obj:
        raise RowError("no field 'messages' (data.format chat: each row is {\"messages\": [{\"role\": ..., \"content\": ...}, ...]})")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise RowError("'messages' is not a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise RowError(f"messages[{i}] has no 'role'")
        if m["role"] not in ROLES:
            raise RowError(f"messages[{i}].role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise RowError(f"messages[{i}].content is not a string")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise RowError("no assistant turn in 'messages': nothing to train on (training.lossOn assistant)")
    return messages


def check_prompt_completion(obj: Any) -> tuple[str, str]:
    if not isinstance(obj, dict):
        raise RowError("not a JSON object with 'prompt' and 'completion'")
    for key in ("prompt", "completion"):
        if key not in obj:
            raise RowError(f"no field {key!r} (data.format promptCompletion: each row is {{\"prompt\": ..., \"completion\": ...}})")
        if not isinstance(obj[key], str):
            raise RowError(f"{key!r} is not a string")
    return obj["prompt"], obj["completion"]


def spans_to_token_mask(spans: Sequence[tuple[int, int]], offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Tokens whose characters overlap a span: from the token holding its first character to the one holding its last."""
    mask = np.zeros(len(offsets), dtype=bool)
    if not len(offsets):
        return mask
    starts = np.asarray([a for a, _ in offsets])
    ends = np.asarray([b for _, b in offsets])
    for a, b in spans:
        if b > a:
            mask |= (starts < b) & (ends > a)
    return mask


def assistant_spans_by_prefix(template: str, messages: list[dict], specials: dict[str, str], text: str) -> list[tuple[int, int]]:
    """Each assistant turn's characters: render(up to and with the turn) minus render(up to it, generation prompt)."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, _ = render(template, messages[:i], specials, add_generation_prompt=True)
        through, _ = render(template, messages[:i + 1], specials)
        if not (through.startswith(before) and text.startswith(through)):
            raise TemplateRenderError(
                f"the chat template renders messages[{i}] (assistant) so that the conversation up to it is not a prefix of the whole "
                "(it changes earlier turns once later ones follow): the assistant's tokens cannot be found; give the template "
                "{% generation %} markers")
        spans.append((len(before), len(through)))
    return spans


def chat_example(tok: HFTokenizer, messages: list[dict], loss_on: str) -> Example:
    if not tok.chat_template:
        raise TemplateRenderError("the tokenizer has no chat_template (tokenizer_config.json) to render chat data with")
    template = tok.chat_template
    text, spans = render(template, messages, tok.special_tokens)
    ids, offsets = tok.encode(text)
    if loss_on == "all":
        targets = np.ones(len(ids), dtype=bool)
    else:
        if has_generation_markers(template):
            if not spans:
                raise TemplateRenderError("the chat template's {% generation %} blocks rendered nothing for a conversation with an assistant turn")
        else:
            spans = assistant_spans_by_prefix(template, messages, tok.special_tokens, text)
        targets = spans_to_token_mask(spans, offsets)
    return Example(np.asarray(ids, dtype=np.int64), targets)


def prompt_completion_example(tok: HFTokenizer, prompt: str, completion: str, loss_on: str) -> Example:
    eos = tok.eos_id
    if eos is None:
        raise TemplateRenderError("the tokenizer has no end-of-text token (eos_token) to end each completion with")
    prompt_ids, _ = tok.encode(prompt)
    completion_ids, _ = tok.encode(completion)
    ids = np.asarray([*prompt_ids, *completion_ids, eos], dtype=np.int64)
    targets = np.ones(len(ids), dtype=bool)
    if loss_on != "all":
        targets[:len(prompt_ids)] = False
    return Example(ids, targets)


def row_example(tok: HFTokenizer, fmt: str, obj: Any, loss_on: str) -> Example:
    """RowError or TemplateRenderError for a row that cannot be an example."""
    if fmt == "chat":
        return chat_example(tok, check_messages(obj, need_assistant=loss_on == "assistant"), loss_on)
    prompt, completion = check_prompt_completion(obj)
    return prompt_completion_example(tok, prompt, completion, loss_on)
