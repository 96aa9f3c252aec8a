"""Writes the chat SFT test data beside this file: a tiny byte-level BPE tokenizer with a ChatML chat template (as
Qwen2's), the same with {% generation %} markers, and learnable conversations.

    python tests/trainer/data/make_chat_data.py

Deterministic (seeded conversations, the tokenizers library's BPE trainer): running it again rewrites the same files.
  chatml/             tokenizer.json + tokenizer_config.json (chat_template without markers: spans by prefix rendering)
  chatml-generation/  the same tokenizer, its template marking the assistant's tokens with {% generation %}
  chat-train.jsonl    200 conversations {"messages": [...]}, some with a system turn, some with two exchanges
  chat-eval.jsonl     40 more, held out
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 320
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]

# Qwen2's ChatML template, shortened (no tools): a default system turn, raise_exception on an unknown role
CHATML = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{- raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif %}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "{{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)
# the same text; the assistant's content and its <|im_end|> inside {% generation %} (the newline after it is not trained)
CHATML_GENERATION = CHATML.replace(
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\n",
    "{%- if message['role'] == 'assistant' %}\n"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}\n"
    "{%- else %}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\n"
    "{%- endif %}\n",
)


def exchange(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(10), rng.randrange(9)
    if rng.random() < 0.5:
        return f"What is {WORDS[a]} plus {WORDS[b]}?", f"{WORDS[a]} plus {WORDS[b]} is {WORDS[a + b]}."
    word = WORDS[a]
    return f"Spell {word}.", f"{word} is spelled {'-'.join(word)}."


def conversation(rng: random.Random) -> dict:
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": "Answer in one sentence."})
    for _ in range(1 + (rng.random() < 0.4)):
        question, answer = exchange(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def train_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return tok


def tokenizer_config(template: str) -> dict:
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
            "unk_token": None, "model_max_length": 4096, "clean_up_tokenization_spaces": False, "chat_template": template}


def main() -> None:
    rng = random.Random(21)
    train = [conversation(rng) for _ in range(200)]
    held_out = [conversation(rng) for _ in range(40)]
    for name, rows in (("chat-train.jsonl", train), ("chat-eval.jsonl", held_out)):
        (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = [m["content"] for r in train for m in r["messages"]] + ["You are a helpful assistant.", "system", "user", "assistant"]
    tok = train_tokenizer(corpus)
    for directory, template in (("chatml", CHATML), ("chatml-generation", CHATML_GENERATION)):
        out = HERE / directory
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        tok.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(template), indent=1) + "\n")


if __name__ == "__main__":
    main()
