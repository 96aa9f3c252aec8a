"""Named model sizes shared by the API (validation, FLOPs) and the trainer (construction)."""

from __future__ import annotations

from typing import Literal

Architecture = Literal["gpt", "llama"]

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
}

PresetName = Literal[
    "tiny", "tiny-llama", "gpt2-124m", "gpt2-350m", "gpt2-1.3b", "llama-160m", "llama-1b", "llama-3b", "llama-8b"
]
assert set(PresetName.__args__) == set(PRESETS)  # type: ignore[attr-defined]
