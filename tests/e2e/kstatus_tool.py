"""kstatus of a live object, computed by sigs.k8s.io/cli-utils itself (hack/kstatus.sh builds a tiny Go program from it,
cached by version): the health Flux and kapply read."""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def _binary() -> str:
    script = str(ROOT / "hack/kstatus.sh")
    subprocess.run(["bash", script, "build"], check=True, timeout=900)  # seconds once ./dev test's background build ran
    return subprocess.run(["bash", script, "bin"], check=True, capture_output=True, text=True).stdout.strip()


def kstatus(obj: dict) -> str:
    """Current, InProgress, Failed, …"""
    out = subprocess.run([_binary()], input=json.dumps(obj), capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"kstatus: {out.stderr}")
    return json.loads(out.stdout)["status"]
