"""The benchmark's CPU smoke mode: our production step loop, and the reference script when it is present."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from trainer_testlib import REPO

pytestmark = pytest.mark.trainer

BASELINE = REPO.parent / "shared" / "bench" / "gpu_baseline.py"  # outside the repository; absent in CI


def test_bench_trainer_tiny_cpu(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_trainer.py"), "--tiny", "--device", "cpu",
           "--steps", "2", "--warmup", "1", "--out", str(tmp_path)]
    if BASELINE.exists():
        cmd += ["--baseline", str(BASELINE), "--baseline-configs", "torch-eager"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["config"]: r for r in json.loads((tmp_path / "bench_trainer.json").read_text())["results"]}
    ours = rows["llm_trainer zero1"]
    assert ours["status"] == "ok" and ours["tokens_per_s"] > 0 and math.isfinite(ours["loss_last"])
    assert ours["tokens_per_step"] == 2 * 64 and ours["n_params"] == 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64 + 50304 * 64
    assert ours["ds_config"]["zero_optimization"]["stage"] == 1
    if BASELINE.exists():
        assert rows["torch-eager"]["status"] == "ok"
        ratio = ours["tokens_per_s"] / rows["torch-eager"]["tokens_per_s"]
        assert f"{ratio:.3f}" in proc.stdout  # the printed comparison
