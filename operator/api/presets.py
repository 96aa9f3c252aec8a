"""Named model sizes shared by the API (validation, FLOPs) and the trainer (construction)."""

from __future__ import annotations

from typing import Literal

Architecture = Literal["gpt", "llama", "qwen2", "qwen3", "mistral"]

# Each preset fills the ModelSpec fields that the manifest leaves out.
# gpt2-* shapes match ../shared/bench/gpu_baseline.py so benchmarks compare like with like.
PRESETS: dict[str, dict] = {
    "tiny": dict(architecture="gpt", nLayers=2, dModel=64, nHeads=4, nKvHeads=4, seqLen=64, vocabSize=256),
    "tiny-llama": dict(architecture="llama", nLayers=2, dModel=64, nHeads=4, nKvHeads=2, seqLen=64, vocabSize=256, ffnHidden=176),
    "gpt2-124m": dict(architecture="gpt", nLayers=12, dModel=768, nHeads=12, nKvHeads=12, seqLen=1024, vocabSize=50304),
    "gpt2-350m": dict(architecture="gpt", nLayers=24, dModel=1024, nHeads=16, nKvHeads=16, seqLen=1024, vocabSize=50304),
    "gpt2-1.3b": dict(architecture="gpt", nLayers=24, dModel=2048, nHeads=16, nKvHeads=16, seqLen=2048, vocabSize=50304),
    "llama-160m": dict(architecture="llama", nLayers=12, dModel=768, nHeads=12, nKvHeads=4, seqLen=2048, vocabSize=32000, ffnHidden=2048),
    "llama-1b": dict(architecture="llama", nLayers=16, dModel=2048, nHeads=32, nKvHeads=8, seqLen=2048, vocabSize=128256, ffnHidden=8192, tieEmbeddings=True),
    "llama-3b": dict(architecture="llama", nLayers=28, dModel=3072, nHeads=24, nKvHeads=8, seqLen=4096, vocabSize=128256, ffnHidden=8192, tieEmbeddings=True),
    "llama-8b": dict(architecture="llama", nLayers=32, dModel=4096, nHeads=32, nKvHeads=8, seqLen=8192, vocabSize=128256, ffnHidden=14336),
    # The Hugging Face families at the shapes of their released config.json (Qwen/Qwen2.5-*, Qwen/Qwen3-*,
    # mistralai/Mistral-7B-v0.3), with their RoPE base, norm epsilon and head size (not fields of ModelSpec).
    "tiny-qwen3": dict(architecture="qwen3", nLayers=2, dModel=64, nHeads=4, nKvHeads=2, seqLen=64, vocabSize=256, ffnHidden=176,
                       headDim=32, ropeTheta=1000000.0, normEps=1e-6, tieEmbeddings=True),
    "qwen2.5-0.5b": dict(architecture="qwen2", nLayers=24, dModel=896, nHeads=14, nKvHeads=2, seqLen=4096, vocabSize=151936,
                         ffnHidden=4864, ropeTheta=1000000.0, normEps=1e-6, tieEmbeddings=True),
    "qwen2.5-1.5b": dict(architecture="qwen2", nLayers=28, dModel=1536, nHeads=12, nKvHeads=2, seqLen=4096, vocabSize=151936,
                         ffnHidden=8960, ropeTheta=1000000.0, normEps=1e-6, tieEmbeddings=True),
    "qwen2.5-7b": dict(architecture="qwen2", nLayers=28, dModel=3584, nHeads=28, nKvHeads=4, seqLen=4096, vocabSize=152064,
                       ffnHidden=18944, ropeTheta=1000000.0, normEps=1e-6, tieEmbeddings=False),
    "qwen3-0.6b": dict(architecture="qwen3", nLayers=28, dModel=1024, nHeads=16, nKvHeads=8, seqLen=4096, vocabSize=151936,
                       ffnHidden=3072, headDim=128, ropeTheta=1000000.0, normEps=1e-6, tieEmbeddings=True),
    "qwen3-1.7b": dict(architecture="qwen3", nLayers=28, dModel=2048, nHeads=16, nKvHeads=8, seqLen=4096, vocabSize=151936,
                       ffnHidden=6144, headDim=128, ropeTheta=1000000.0, normEps=1e-6, tieEmbeddings=True),
    "qwen3-8b": dict(architecture="qwen3", nLayers=36, dModel=4096, nHeads=32, nKvHeads=8, seqLen=4096, vocabSize=151936,
                     ffnHidden=12288, headDim=128, ropeTheta=1000000.0, normEps=1e-6, tieEmbeddings=False),
    "mistral-7b": dict(architecture="mistral", nLayers=32, dModel=4096, nHeads=32, nKvHeads=8, seqLen=4096, vocabSize=32768,
                       ffnHidden=14336, ropeTheta=1000000.0, normEps=1e-5, tieEmbeddings=False),
}

PresetName = Literal[
    "tiny", "tiny-llama", "gpt2-124m", "gpt2-350m", "gpt2-1.3b", "llama-160m", "llama-1b", "llama-3b", "llama-8b",
    "tiny-qwen3", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "qwen3-0.6b", "qwen3-1.7b", "qwen3-8b", "mistral-7b",
]
assert set(PresetName.__args__) == set(PRESETS)  # type: ignore[attr-defined]
