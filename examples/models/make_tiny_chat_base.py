"""Writes examples/models/tiny-chat-qwen2: the base model of examples/sft-chat-lora.yaml.

A randomly initialised Qwen2-shaped decoder (q/k/v bias, tied embeddings; 2 layers, dModel 64, about 0.1 M
parameters) in the Hugging Face layout, with the ChatML tokenizer of the tests (tests/trainer/data/chatml: a
320-token BPE and Qwen2's chat template). It stands in for a released checkpoint such as Qwen/Qwen2.5-0.5B-Instruct,
which the example would name instead on a machine that has it: nothing here is downloaded.

    python examples/models/make_tiny_chat_base.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

from llm_trainer.hf import save_hf_model
from llm_trainer.model import ModelConfig, build_model

HERE = Path(__file__).resolve().parent
TOKENIZER = HERE.parents[1] / "tests" / "trainer" / "data" / "chatml"
BASE = ModelConfig("qwen2", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=176, seq_len=256, vocab_size=320,
                   tie_embeddings=True, qkv_bias=True)


def main() -> None:
    out = HERE / "tiny-chat-qwen2"
    shutil.rmtree(out, ignore_errors=True)
    save_hf_model(BASE, build_model(BASE, seed=0).state_dict(), out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, out / name)
    print(f"wrote {out.relative_to(HERE.parents[1])}")


if __name__ == "__main__":
    main()
