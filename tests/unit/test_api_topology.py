"""spec.gang.topology and spec.managedBy (issue 20): what the operator's own parse refuses, with the field named.
The API server's refusals of the same manifests are tests/e2e/test_operator.py::TestCRD."""

import pytest

from llm_operator.api import SpecError, parse_job


def problems(manifest) -> str:
    with pytest.raises(SpecError) as info:
        parse_job(manifest)
    return str(info.value)


@pytest.mark.parametrize("topology, level", [
    ({"required": "cloud.provider.com/topology-block"}, "cloud.provider.com/topology-block"),
    ({"preferred": "topology.kubernetes.io/rack"}, "topology.kubernetes.io/rack"),
    ({"required": "rack"}, "rack"),
])
def test_a_topology_level_is_one_label_key(manifest, topology, level):
    manifest["spec"]["gang"] = {"topology": topology}
    assert parse_job(manifest).spec.gang.topology.level == level


@pytest.mark.parametrize("topology, expected", [
    ({}, "gang.topology needs exactly one of required or preferred"),
    ({"required": "a/b", "preferred": "c/d"}, "gang.topology needs exactly one of required or preferred"),
    ({"required": "not a label"}, "spec.gang.topology.required"),
    ({"required": "two/slashes/here"}, "spec.gang.topology.required"),
    ({"preferred": "UPPER.example.com/rack"}, "spec.gang.topology.preferred"),  # a DNS prefix is lower case
    ({"preferred": "x" * 64}, "spec.gang.topology.preferred"),  # a name part has at most 63 characters
    ({"preferred": "-rack"}, "spec.gang.topology.preferred"),
    ({"zone": "topology.kubernetes.io/zone"}, "spec.gang.topology.zone"),
])
def test_malformed_topology_is_refused_naming_the_field(manifest, topology, expected):
    manifest["spec"]["gang"] = {"topology": topology}
    assert expected in problems(manifest)


def test_managed_by_is_multikueue_or_absent(manifest):
    assert parse_job(manifest).spec.managed_by is None
    manifest["spec"]["managedBy"] = "kueue.x-k8s.io/multikueue"
    assert parse_job(manifest).spec.managed_by == "kueue.x-k8s.io/multikueue"
    manifest["spec"]["managedBy"] = "example.com/other"
    assert "spec.managedBy" in problems(manifest)


def test_the_crd_carries_the_same_rules():
    from llm_operator.api.crd import build_crd
    from llm_operator.api.v1alpha1 import LABEL_KEY_PATTERN, TOPOLOGY_ONE_OF

    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    topology = spec["gang"]["properties"]["topology"]
    assert [r["message"] for r in topology["x-kubernetes-validations"]] == [TOPOLOGY_ONE_OF]
    for key in ("required", "preferred"):
        assert topology["properties"][key]["pattern"] == LABEL_KEY_PATTERN and topology["properties"][key]["maxLength"] == 317
    assert spec["managedBy"]["enum"] == ["kueue.x-k8s.io/multikueue"]
