import copy

import pytest

BASE_MANIFEST = {
    "apiVersion": "llmtraining.dev/v1alpha1",
    "kind": "LLMTrainingJob",
    "metadata": {"name": "demo", "namespace": "team-a", "uid": "0b5c1e5e-1111-2222-3333-444455556666"},
    "spec": {
        "image": "ghcr.io/llmtraining/trainer:0.1.0",
        "nodes": 2,
        "slotsPerNode": 4,
        "model": {"preset": "tiny"},
        "training": {"steps": 10, "microBatchSize": 2, "globalBatchSize": 32},
    },
}


@pytest.fixture
def manifest():
    """A fresh valid manifest each test may mutate."""
    return copy.deepcopy(BASE_MANIFEST)
