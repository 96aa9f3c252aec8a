"""The Argo CD health check (config/argocd/.../health.lua) run by gopher-lua, the Lua Argo CD embeds (hack/lua-health.sh
builds a tiny Go harness, cached by version), over the cases of its health_test.yaml in Argo CD's layout."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "config/argocd/resource_customizations/llmtraining.dev/LLMTrainingJob"
CASES = yaml.safe_load((CHECK / "health_test.yaml").read_text())["tests"]


@pytest.fixture(scope="module")
def lua_health() -> str:
    subprocess.run(["bash", str(ROOT / "hack/lua-health.sh"), "build"], check=True, timeout=600)
    return subprocess.run(["bash", str(ROOT / "hack/lua-health.sh"), "bin"], check=True, capture_output=True, text=True).stdout.strip()


def health(lua_health: str, obj: dict) -> dict:
    out = subprocess.run([lua_health, str(CHECK / "health.lua")], input=json.dumps(obj), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("case", CASES, ids=[c["inputPath"] for c in CASES])
def test_health_lua_gives_each_phase_its_status(lua_health, case):
    obj = yaml.safe_load((CHECK / case["inputPath"]).read_text())
    assert health(lua_health, obj) == case["healthStatus"]


def test_every_phase_of_the_api_has_a_case():
    from llm_operator.api.v1alpha1 import LLMTrainingJobStatus

    phases = set(LLMTrainingJobStatus.model_fields["phase"].annotation.__args__[0].__args__)
    covered = {yaml.safe_load((CHECK / c["inputPath"]).read_text()).get("status", {}).get("phase") for c in CASES}
    assert phases - covered == {"Created"}  # Created reads as Pending does (Progressing); the unit table covers it


def test_status_of_an_older_generation_is_progressing(lua_health):
    obj = yaml.safe_load((CHECK / "testdata/running.yaml").read_text())
    obj["metadata"]["generation"] = 2
    assert health(lua_health, obj) == {"status": "Progressing", "message": "Waiting for the operator to observe generation 2"}
