"""Chat templates rendered the way transformers' apply_chat_template renders them (utils/chat_template_utils.py):

Jinja2's ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols extension, a
`{% generation %}` block tag that records the characters it renders (the assistant's tokens), the globals
raise_exception, strftime_now and the sandbox's restricted dict and namespace, a tojson filter that keeps non-ASCII
characters, and the variables messages (keys whose value is null dropped, reasoning under reasoning_content and
thinking), tools and documents (none), add_generation_prompt and the tokenizer's special tokens (bos_token, ...).
Checked against transformers 5.23 (tests/trainer/test_sft_template.py compares token ids and assistant masks).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateRenderError(ValueError):
    """The template failed on a conversation (its own raise_exception, or a Jinja error)."""


class _GenerationTracker(Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body and records the body's character span."""

    tags = {"generation"}

    def __init__(self, environment: jinja2.Environment):
        super().__init__(environment)
        environment.extend(generation_spans=None, rendered_blocks=None)

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_track", []), [], [], body).set_lineno(lineno)

    def _track(self, caller) -> str:
        rendered = caller()
        env: Any = self.environment
        if env.rendered_blocks is not None:
            start = len("".join(env.rendered_blocks))
            env.generation_spans.append((start, start + len(rendered)))
        return rendered


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """dict() and dict.fromkeys() without the type itself (no attribute access to break out of the sandbox)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """namespace() refusing underscore-prefixed attributes (a way to CPython internals)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}")


REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def template_messages(messages: list[dict]) -> list[dict]:
    """What apply_chat_template hands the template: null values dropped, reasoning under both names templates read."""
    out = []
    for message in messages:
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


@functools.lru_cache(maxsize=8)
def compile_template(source: str) -> jinja2.Template:
    """Raises TemplateRenderError for a template that does not parse."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTracker, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateRenderError(f"the chat template does not parse: {exc.message} (template line {exc.lineno})") from None


def has_generation_markers(source: str) -> bool:
    return any(token[1] == "name" and token[2] == "generation" for token in jinja2.Environment().lex(source))


def render(source: str, messages: list[dict], special_tokens: dict[str, str], *, add_generation_prompt: bool = False,
           **kwargs: Any) -> tuple[str, list[tuple[int, int]]]:
    """(text, character spans of the {% generation %} blocks) of one conversation."""
    template = compile_template(source)
    env: Any = template.environment
    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    env.rendered_blocks, env.generation_spans = blocks, spans  # the environment is this template's alone
    try:
        for block in template.generate(messages=template_messages(messages), tools=None, documents=None,
                                       add_generation_prompt=add_generation_prompt, **{**special_tokens, **kwargs}):
            blocks.append(block)
    except jinja2.TemplateError as exc:
        raise TemplateRenderError(f"the chat template does not render: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise TemplateRenderError(f"the chat template does not render: {type(exc).__name__}: {exc}") from None
    finally:
        env.rendered_blocks, env.generation_spans = None, None
    return "".join(blocks), spans
