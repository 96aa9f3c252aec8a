"""Property tests: any valid spec renders objects Kubernetes accepts, with exactly `nodes` pods and hostfile lines."""

import json

import kubernetes_validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.client import ApiClient

from llm_operator.api import parse_job
from llm_operator.render import RenderContext, render_children

CLIENT_MODELS = {"Pod": "V1Pod", "Service": "V1Service", "ConfigMap": "V1ConfigMap", "Secret": "V1Secret"}
K8S_SCHEMA_VERSION = "1.34"
api_client = ApiClient()


@st.composite
def manifests(draw):
    nodes = draw(st.integers(1, 512))
    slots = draw(st.integers(1, 8))
    micro = draw(st.integers(1, 4))
    accumulation = draw(st.integers(1, 4))
    name_len = draw(st.integers(1, 63 - len("-worker-") - len(str(nodes - 1))))
    name = draw(st.from_regex(r"[a-z][a-z0-9-]*", fullmatch=True).filter(lambda s: not s.endswith("-")).map(lambda s: s[:name_len].rstrip("-") or "j"))
    mode = draw(st.sampled_from(["noSsh", "ssh"]))
    profile = draw(st.sampled_from(["tcp", "infiniband", "roce", "efa"]))
    accelerator = draw(st.sampled_from(["gpu", "cpu"]))
    precision = draw(st.sampled_from(["bf16", "fp32"] + (["fp16"] if accelerator == "gpu" else [])))
    zero = draw(st.integers(0, 3))
    spec = {
        "image": "registry.example/trainer:1",
        "nodes": nodes,
        "slotsPerNode": slots,
        "accelerator": accelerator,
        "launcher": {"mode": mode, "masterPort": draw(st.integers(1024, 65535))},
        "model": {"preset": draw(st.sampled_from(["tiny", "tiny-llama", "gpt2-124m", "llama-1b"]))},
        "training": {
            "steps": draw(st.integers(1, 10_000)),
            "microBatchSize": micro,
            "globalBatchSize": micro * nodes * slots * accumulation,
            "precision": precision,
            "zeroStage": zero,
            "gradientClipping": draw(st.sampled_from([0.0, 0.5, 1.0])),
        },
        "network": {
            "profile": profile,
            "interfaces": draw(st.lists(st.sampled_from(["eth0", "ib0", "enp1s0"]), max_size=2, unique=True)),
            "shmSize": draw(st.sampled_from(["1Gi", "64Gi", "500Mi"])),
            "hostNetwork": draw(st.booleans()),
        },
        "checkpoint": {"intervalSteps": draw(st.integers(0, 5000)), "keep": draw(st.integers(1, 10))},
        "podTemplate": {"labels": draw(st.dictionaries(st.sampled_from(["team", "env"]), st.sampled_from(["a", "b"]), max_size=2))},
    }
    return {
        "apiVersion": "llmtraining.dev/v1alpha1",
        "kind": "LLMTrainingJob",
        "metadata": {"name": name, "namespace": draw(st.sampled_from(["default", "ml-team"])), "uid": "2f1d5a3e-0000-4000-8000-000000000000"},
        "spec": spec,
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_any_valid_spec_renders_valid_kubernetes_objects(manifest):
    job = parse_job(manifest)
    children = render_children(job, RenderContext(), ssh_keys={"id_ed25519": "k"} if job.spec.launcher.mode == "ssh" else None)

    pods = [c for c in children if c["kind"] == "Pod"]
    # pods differ only by rank: check the first, second and last in depth (keeps the test fast)
    distinct = [c for c in children if c["kind"] != "Pod"] + [pods[0], pods[min(1, len(pods) - 1)], pods[-1]]
    for child in distinct:
        # the Kubernetes client's own models (required fields, types) ...
        model = api_client._ApiClient__deserialize(json.loads(json.dumps(child)), CLIENT_MODELS[child["kind"]])
        assert model.metadata.name == child["metadata"]["name"]
        # ... and the OpenAPI schema of the Kubernetes release we test against
        kubernetes_validate.validate(child, K8S_SCHEMA_VERSION, strict=True)
        assert len(child["metadata"]["name"]) <= 63

    assert len(pods) == job.spec.nodes
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(f"{job.metadata.name}-worker-{i}" for i in range(job.spec.nodes))
    hostfile = next(c for c in children if c["kind"] == "ConfigMap")["data"]["hostfile"].splitlines()
    assert len(hostfile) == job.spec.nodes
    assert all(line.endswith(f" slots={job.spec.slots_per_node}") for line in hostfile)
    for pod in pods:
        assert len(pod["spec"]["hostname"]) <= 63
