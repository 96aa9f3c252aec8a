"""Chat templates and answer-only masks, checked against transformers' apply_chat_template on the shipped tokenizers
(tests/trainer/data/make_chat_data.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm_trainer.sft.chat_template import TemplateRenderError, render
from llm_trainer.sft.examples import RowError, chat_example, check_messages, prompt_completion_example, row_example
from llm_trainer.sft.tokenizer import load_tokenizer

DATA = Path(__file__).resolve().parent / "data"
CHATML, CHATML_GENERATION = DATA / "chatml", DATA / "chatml-generation"


def conversations() -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in (DATA / "chat-train.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", params=[CHATML, CHATML_GENERATION], ids=["chatml", "chatml-generation"])
def tokenizers(request):
    from transformers import AutoTokenizer

    return load_tokenizer(str(request.param)), AutoTokenizer.from_pretrained(str(request.param))


def test_token_ids_equal_apply_chat_template(tokenizers):
    ours, hf = tokenizers
    for messages in conversations()[:60]:
        for prompt in (False, True):
            text, _ = render(ours.chat_template, messages, ours.special_tokens, add_generation_prompt=prompt)
            assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        assert chat_example(ours, messages, "all").ids.tolist() == hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]


def test_generation_markers_give_transformers_assistant_mask():
    from transformers import AutoTokenizer

    ours, hf = load_tokenizer(str(CHATML_GENERATION)), AutoTokenizer.from_pretrained(str(CHATML_GENERATION))
    for messages in conversations()[:60]:
        expected = hf.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)["assistant_masks"]
        assert chat_example(ours, messages, "assistant").targets.astype(int).tolist() == expected


def assistant_texts_in_rendering(text: str, messages: list[dict]) -> list[tuple[int, int]]:
    """Where the template itself wrote each assistant turn: its ChatML header found in order, then content + <|im_end|>."""
    spans, at = [], 0
    for m in messages:
        if m["role"] == "assistant":
            body = m["content"] + "<|im_end|>"
            start = text.index("<|im_start|>assistant\n" + body, at) + len("<|im_start|>assistant\n")
            spans.append((start, start + len(body)))
            at = start + len(body)
    return spans


@pytest.mark.parametrize("directory", [CHATML, CHATML_GENERATION], ids=["prefix-rendering", "generation-markers"])
def test_masked_tokens_are_exactly_the_non_assistant_tokens(directory):
    """Every token inside an assistant turn (content and <|im_end|>) is trained, every other token is not; without markers
    the newline the template writes after <|im_end|> belongs to the turn too (what rendering with and without it adds)."""
    tok = load_tokenizer(str(directory))
    for messages in conversations():
        example = chat_example(tok, messages, "assistant")
        text, _ = render(tok.chat_template, messages, tok.special_tokens)
        ids, offsets = tok.encode(text)
        inside = np.zeros(len(ids), dtype=bool)
        for a, b in assistant_texts_in_rendering(text, messages):
            b += 1 if directory == CHATML else 0  # the "\n" after <|im_end|>
            inside |= np.asarray([s >= a and e <= b for s, e in offsets])
        assert example.targets.tolist() == inside.tolist()
        trained = tok.tokenizer.decode(example.ids[example.targets].tolist(), skip_special_tokens=False)
        assert trained.count("<|im_end|>") == sum(m["role"] == "assistant" for m in messages)


def test_the_two_ways_agree_but_for_the_newline():
    plain, marked = load_tokenizer(str(CHATML)), load_tokenizer(str(CHATML_GENERATION))
    newline = plain.tokenizer.token_to_id("Ċ")  # byte-level "\n"
    for messages in conversations()[:40]:
        a, b = chat_example(plain, messages, "assistant"), chat_example(marked, messages, "assistant")
        assert a.ids.tolist() == b.ids.tolist()
        differ = a.targets != b.targets
        assert differ.sum() == sum(m["role"] == "assistant" for m in messages) and set(a.ids[differ].tolist()) == {newline}


def test_template_globals_render_as_in_transformers():
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(CHATML))
    template = ("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m | tojson }}"
                "{% if loop.index > 5 %}{% break %}{% endif %}\n{% endfor %}{{ ns.n }} {{ eos_token }} {{ dict(a=1) | tojson }}"
                "{{ strftime_now('%Y') | length }}{% if add_generation_prompt %}GO{% endif %}")
    messages = [{"role": "user", "content": "héllo"}, {"role": "assistant", "content": None, "reasoning_content": "hm"}]
    tok = load_tokenizer(str(CHATML))
    for prompt in (False, True):
        ours, _ = render(template, messages, tok.special_tokens, add_generation_prompt=prompt)
        assert ours == hf.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=prompt)
    with pytest.raises(TemplateRenderError, match="unknown role: robot"):
        render(tok.chat_template, [{"role": "robot", "content": "x"}], tok.special_tokens)
    with pytest.raises(TemplateRenderError, match="does not parse"):
        render("{% for m in messages %}", [], {})


@pytest.mark.parametrize("row,message", [
    ({"text": "hi"}, "no field 'messages'"),
    ({"messages": []}, "not a non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, r"messages\[0\].role 'robot' is not one of"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
    ({"messages": [{"role": "assistant", "content": 3}]}, r"messages\[0\].content is not a string"),
])
def test_bad_chat_rows(row, message):
    with pytest.raises(RowError, match=message):
        check_messages(row, need_assistant=True)


def test_a_conversation_without_assistant_trains_with_loss_on_all():
    tok = load_tokenizer(str(CHATML))
    example = row_example(tok, "chat", {"messages": [{"role": "user", "content": "Spell two."}]}, "all")
    assert example.targets.all()


def test_prompt_completion_trains_on_the_completion_and_eos():
    tok = load_tokenizer(str(CHATML))
    example = prompt_completion_example(tok, "What is two plus two?", " four", "assistant")
    prompt_ids, _ = tok.encode("What is two plus two?")
    completion_ids, _ = tok.encode(" four")
    assert example.ids.tolist() == prompt_ids + completion_ids + [tok.eos_id]
    assert example.targets.tolist() == [False] * len(prompt_ids) + [True] * (len(completion_ids) + 1)
    assert prompt_completion_example(tok, "What is two plus two?", " four", "all").targets.all()
