"""Generate the CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema; the API server wants a *structural* OpenAPI v3 schema: no $ref, no
`additionalProperties` beside `properties`, no `null` types, boolean exclusive bounds, and
defaults on optional sub-objects so that their fields' defaults apply when a manifest omits them.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from .v1alpha1 import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, LLMTrainingJob, LLMTrainingJobStatus

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Job phase"},
    {"name": "Nodes", "type": "string", "jsonPath": ".status.nodesReady", "description": "Worker pods ready/total"},
    {"name": "Step", "type": "string", "jsonPath": ".status.progress.stepOfTotal", "description": "Training step/total steps"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss", "description": "Training loss at the last logged step"},
    {"name": "Eval Loss", "type": "number", "jsonPath": ".status.progress.evalLoss", "description": "Held-out loss at the last evaluation",
     "priority": 1},  # -o wide: most jobs do not evaluate, and an empty column would crowd the default view
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "description": "Gang restarts so far"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP = {"title", "$defs"}


def _structural(node: Any, defs: dict[str, Any], object_defaults: bool = True) -> Any:
    """object_defaults: fill optional sub-objects with their fields' defaults (spec, not status)."""
    if isinstance(node, list):
        return [_structural(n, defs, object_defaults) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:  # inline the referenced model; the field's own keys (description) win
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        target.pop("description", None) if "description" in node else None
        target.update(node)
        node = target
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        if len(variants) == 1:  # Optional[X]: absent means null, so the schema is just X
            del node["anyOf"]
            inner = _structural(variants[0], defs, object_defaults)
            node = {**inner, **{k: v for k, v in node.items() if k != "default" or v is not None}}
    if node.get("default", "") is None:
        del node["default"]
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if "properties" in node:
        node.pop("additionalProperties", None)
        node["type"] = "object"
    if "const" in node:  # Literal with one value
        node["enum"] = [node.pop("const")]
    # Optional[Model] = None: absent means something (e.g. data.validation: no held-out data), so never defaulted
    nullable = {name for name, prop in (node.get("properties") or {}).items()
                if any(variant.get("type") == "null" for variant in prop.get("anyOf", ()))}
    out = {k: _structural(v, defs, object_defaults) for k, v in node.items() if k not in _DROP}
    if "properties" in out and object_defaults:
        required = set(out.get("required", []))
        for name, prop in out["properties"].items():
            # An optional sub-object whose own fields all have defaults gets the object of those
            # defaults, so a manifest that omits it is stored (and diffed by GitOps) complete.
            if prop.pop("x-llmto-no-object-default", False):
                continue
            if prop.get("type") == "object" and "properties" in prop and not prop.get("required") and "default" not in prop \
                    and name not in required and name not in nullable:
                prop["default"] = copy.deepcopy({k: v["default"] for k, v in prop["properties"].items() if "default" in v})
    return out


def openapi_schema() -> dict[str, Any]:
    raw = LLMTrainingJob.model_json_schema(by_alias=True)
    defs = raw.get("$defs", {})
    schema = _structural(raw, defs)
    status_raw = LLMTrainingJobStatus.model_json_schema(by_alias=True)
    # No defaults in status: the operator writes it whole, and `failure: {}` on every job would lie.
    schema["properties"]["status"] = _structural(status_raw, status_raw.get("$defs", {}), object_defaults=False)
    schema["properties"]["status"]["description"] = "Observed state, written by the operator."
    schema["properties"]["metadata"] = {"type": "object"}
    schema["properties"]["apiVersion"] = {"type": "string", "description": "llmtraining.dev/v1alpha1"}
    schema["properties"]["kind"] = {"type": "string", "description": "LLMTrainingJob"}
    schema["properties"]["spec"]["description"] = "Desired state: the model, data, training recipe and the worker gang that runs it."
    schema["description"] = "An LLM training run with DeepSpeed on a gang of worker pods."
    schema["required"] = ["spec"]
    schema.pop("default", None)
    return schema


def build_crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["llmtraining"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated by `llm-operator crd` from operator/api/v1alpha1.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120, allow_unicode=True)
