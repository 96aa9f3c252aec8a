"""The CRD in crds/ is generated from the pydantic models and must stay in sync with them."""

import pathlib

import yaml

from llm_operator.api.crd import build_crd, crd_yaml

CRD_FILE = pathlib.Path(__file__).resolve().parents[2] / "crds" / "llmtraining.dev_llmtrainingjobs.yaml"


def test_crd_file_is_in_sync_with_the_models():
    assert CRD_FILE.read_text() == crd_yaml(), "crds/ is stale: run `llm-operator crd > crds/llmtraining.dev_llmtrainingjobs.yaml`"


def walk(schema, path="root"):
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")


def spec_schema():
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_every_spec_field_is_documented():
    undocumented = [path for path, node in walk(spec_schema()["properties"]["spec"]) if not node.get("description") and not path.endswith("[]")]
    assert undocumented == []


def test_schema_is_structural():
    forbidden = {"$ref", "$defs", "title", "const"}
    for path, node in walk(spec_schema()):
        assert not forbidden & node.keys(), path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("type") != "null", path


def test_defaults_live_in_the_schema():
    spec = spec_schema()["properties"]["spec"]["properties"]
    assert spec["nodes"]["default"] == 1
    assert spec["training"]["properties"]["offload"]["default"] == {"optimizer": "none", "parameters": "none", "nvmePath": "/local_nvme"}
    assert "default" not in spec["model"]  # required, so no default
    assert spec["training"]["properties"]["precision"]["default"] == "bf16"
    assert spec["training"]["properties"]["gradientClipping"]["default"] == 1.0
    assert spec["launcher"]["properties"]["mode"]["default"] == "noSsh"
    # an Optional sub-object whose absence means something is never defaulted: {} would fail its own CEL rule
    # (exactly one of paths and fraction) and turn evaluation data on for every job
    assert "default" not in spec["data"]["properties"]["validation"] and "default" not in spec["data"]
    assert spec["checkpoint"]["properties"]["resume"]["default"] == "latest"


def test_names_and_columns():
    crd = build_crd()["spec"]
    assert crd["group"] == "llmtraining.dev"
    assert crd["names"]["plural"] == "llmtrainingjobs" and crd["names"]["shortNames"] == ["ltj"]
    version = crd["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Nodes", "Step", "Loss", "Eval Loss", "Restarts", "Age"]


def test_cross_field_rules_are_cel():
    schema = spec_schema()
    root_rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert any("self.metadata.name.size()" in r for r in root_rules)
    spec_rules = [r["rule"] for r in schema["properties"]["spec"]["x-kubernetes-validations"]]
    assert any("globalBatchSize %" in r for r in spec_rules)


def test_crd_yaml_parses():
    assert yaml.safe_load(CRD_FILE.read_text())["kind"] == "CustomResourceDefinition"


def test_status_has_no_object_defaults():
    # a defaulted `failure: {}` appeared on every job (found by the e2e namesake test)
    status = spec_schema()["properties"]["status"]
    assert [path for path, node in walk(status) if node.get("type") == "object" and "default" in node] == []
