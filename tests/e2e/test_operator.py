"""The operator on a real control plane: CRD, reconcile, status, garbage collection, restarts.

The operator runs as a subprocess (`llm-operator run`) under a ServiceAccount bound to exactly the
rules the Helm chart ships (charts/llm-training-operator/files/rbac-rules.yaml), never as admin.
Tests observe it only through the API server, with kubectl.
"""

from __future__ import annotations

import base64
import json
import sys
import time

import pytest

from kstatus_tool import kstatus
from operator_harness import finish_pod, get_job, job_manifest, job_pods, wait_phase


# ---------------------------------------------------------------------------------------------- API
class TestCRD:
    def test_explain_shows_our_descriptions(self, control_plane, crd):
        explained = control_plane.kubectl("explain", "ltj.spec").stdout
        assert "Worker pods, one per node" in explained
        training = control_plane.kubectl("explain", "ltj.spec.training.gradientClipping").stdout
        assert "Always written into the DeepSpeed" in " ".join(training.split())

    @pytest.mark.parametrize(
        "mutate, expected",
        [
            (lambda m: m["spec"]["training"].update(globalBatchSize=12),
             "training.globalBatchSize (12) must be divisible by microBatchSize × nodes × slotsPerNode = 1 × 2 × 4 = 8"),
            (lambda m: m["metadata"].update(name="x" * 60), "metadata.name is too long"),
            (lambda m: m["spec"]["training"].update(zeroStage=5), "spec.training.zeroStage"),
            (lambda m: m["spec"]["launcher"].update(mode="mpi") if "launcher" in m["spec"] else m["spec"].update(launcher={"mode": "mpi"}),
             'spec.launcher.mode: Unsupported value: "mpi"'),
            (lambda m: m["spec"].pop("image"), "spec.image: Required value"),
            (lambda m: m["spec"].update(data={"format": "tokens"}), "data.paths is required unless data.format is synthetic"),
            (lambda m: m["spec"].update(model={"architecture": "gpt", "nLayers": 2, "dModel": 64, "nHeads": 3}),
             "model.dModel (64) must be divisible by model.nHeads (3)"),
            (lambda m: m["spec"].update(network={"shmSize": "lots"}), "spec.network.shmSize"),
            (lambda m: m["spec"].update(gang={"minAvailable": 3}), "gang.minAvailable (3) must not exceed nodes (2)"),
            (lambda m: m["spec"].update(gang={"scheduler": "none", "minAvailable": 1}), "gang.minAvailable needs a gang scheduler"),
            (lambda m: m["spec"].update(gang={"scheduler": "slurm"}), 'spec.gang.scheduler: Unsupported value: "slurm"'),
            # topology and MultiKueue (issue 20)
            (lambda m: m["spec"].update(gang={"topology": {}}), "gang.topology needs exactly one of required or preferred"),
            (lambda m: m["spec"].update(gang={"topology": {"required": "rack", "preferred": "block"}}),
             "gang.topology needs exactly one of required or preferred"),
            (lambda m: m["spec"].update(gang={"topology": {"required": "not a/label/key"}}), "spec.gang.topology.required"),
            (lambda m: m["spec"].update(gang={"topology": {"preferred": "x" * 64}}), "spec.gang.topology.preferred"),
            (lambda m: m["spec"].update(managedBy="example.com/other"), 'spec.managedBy: Unsupported value: "example.com/other"'),
            (lambda m: m["spec"].update(data={"format": "tokens", "paths": ["a.bin"]}, training={"evalIntervalSteps": 5}),
             "training.evalIntervalSteps needs data.validation (paths or fraction) unless data.format is synthetic"),
            (lambda m: m["spec"].update(data={"format": "synthetic", "validation": {"fraction": 0.1}}),
             "data.validation: synthetic data holds out its own samples"),
            (lambda m: m["spec"].update(data={"format": "tokens", "paths": ["a.bin"], "validation": {"paths": ["v.bin"], "fraction": 0.1}}),
             "set exactly one of data.validation.paths and data.validation.fraction"),
            # model parallelism (issue 11 part B)
            (lambda m: m["spec"]["training"].update(pipelineStages=2, zeroStage=2),
             "training.zeroStage (2) must be 0 or 1 with training.pipelineStages (2) > 1"),
            (lambda m: m["spec"]["training"].update(pipelineStages=3), "training.pipelineStages (3) must divide nodes × slotsPerNode = 2 × 4 = 8"),
            (lambda m: (m["spec"]["training"].update(pipelineStages=2),
                        m["spec"].update(model={"architecture": "gpt", "nLayers": 3, "dModel": 64, "nHeads": 4})),
             "model.nLayers (3) must be divisible by training.pipelineStages (2)"),
            (lambda m: m["spec"]["training"].update(pipelineStages=2, globalBatchSize=6),
             "training.globalBatchSize (6) must be divisible by microBatchSize × nodes × slotsPerNode / pipelineStages = 1 × 2 × 4 / 2 = 4"),
            # the user's own program (issue 18)
            (lambda m: m["spec"].update(program={"command": ["python", "t.py"]}),
             "model configures the built-in trainer and cannot be combined with program: remove model"),
            (lambda m: (m["spec"].pop("model"), m["spec"].update(program={"command": ["python", "t.py"]})),
             "training configures the built-in trainer and cannot be combined with program: remove training"),
            (lambda m: (m["spec"].pop("model"), m["spec"].pop("training"), m["spec"].update(program={"command": []})),
             "program.command must name the program to run"),
            (lambda m: m["spec"].pop("model"), "set model (the built-in trainer) or program"),
        ],
    )
    def test_api_server_rejects_invalid_manifests(self, control_plane, crd, namespace, mutate, expected):
        manifest = job_manifest("invalid")
        mutate(manifest)
        result = control_plane.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
        assert result.returncode != 0
        assert expected in result.stderr

    def test_a_program_job_is_accepted_without_model_data_training(self, control_plane, crd, namespace):
        manifest = job_manifest("program")
        for field in ("model", "data", "training", "deepspeed"):
            manifest["spec"].pop(field, None)
        manifest["spec"]["program"] = {"command": ["python", "train.py"], "launcher": "torchrun"}
        result = control_plane.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
        assert result.returncode == 0, result.stderr

    def test_pipeline_global_batch_counts_data_parallel_ranks_only(self, control_plane, crd, namespace):
        """8 ranks in 2 stages: 4 data-parallel ranks, so a global batch of 4 is one micro-batch each (not 8)."""
        manifest = job_manifest("piped")
        manifest["spec"]["training"].update(pipelineStages=2, globalBatchSize=4)
        result = control_plane.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
        assert result.returncode == 0, result.stderr

    def test_schema_defaults_are_applied_by_the_api_server(self, control_plane, crd, namespace):
        control_plane.apply(job_manifest("defaults"), namespace)
        spec = get_job(control_plane, namespace, "defaults")["spec"]
        assert spec["launcher"] == {"mode": "noSsh", "masterPort": 29500, "sshPort": 2222, "peerTimeoutSeconds": 600}
        assert spec["training"]["gradientClipping"] == 1.0 and spec["training"]["precision"] == "bf16"
        assert spec["checkpoint"]["resume"] == "latest"


    def test_spec_is_immutable(self, control_plane, crd, namespace):
        control_plane.apply(job_manifest("frozen"), namespace)
        result = control_plane.kubectl("patch", "ltj", "frozen", "-n", namespace, "--type=merge", "-p", '{"spec": {"training": {"steps": 20}}}', check=False)
        assert result.returncode != 0 and "spec is immutable once the job is created" in result.stderr
        control_plane.kubectl("annotate", "ltj", "frozen", "-n", namespace, "team=search")  # metadata stays editable
        for patch in ('{"spec": {"runPolicy": {"backoffLimit": 9}}}', '{"spec": {"runPolicy": {"activeDeadlineSeconds": 60}}}',
                      '{"spec": {"podTemplate": {"labels": {"x": "y"}}}}', '{"spec": {"gang": {"scheduler": "none"}}}',
                      '{"spec": {"gang": {"topology": {"preferred": "topology.kubernetes.io/rack"}}}}',
                      '{"spec": {"managedBy": "kueue.x-k8s.io/multikueue"}}'):
            result = control_plane.kubectl("patch", "ltj", "frozen", "-n", namespace, "--type=merge", "-p", patch, check=False)
            assert result.returncode != 0 and "except runPolicy.suspend" in result.stderr, patch
        control_plane.kubectl("patch", "ltj", "frozen", "-n", namespace, "--type=merge", "-p", '{"spec": {"runPolicy": {"suspend": true}}}')


# ---------------------------------------------------------------------------------------- reconcile
def test_job_runs_on_gpu_nodes(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("gang"), namespace)
    job = wait_phase(cp, operator, namespace, "gang", "Running")
    assert job["status"]["readyNodes"] == 2 and job["status"]["nodesReady"] == "2/2"

    children = {(o["kind"], o["metadata"]["name"]) for o in cp.get_json("configmaps,services,pods", "-n", namespace, "-l", "llmtraining.dev/job-name=gang")["items"]}
    assert children == {("ConfigMap", "gang-config"), ("Service", "gang"), ("Pod", "gang-worker-0"), ("Pod", "gang-worker-1")}
    nodes = {n["metadata"]["name"]: n for n in cp.get_json("nodes", "-l", cp.GPU_NODE_SELECTOR)["items"]}
    for pod in job_pods(cp, namespace, "gang"):
        assert pod["spec"]["nodeName"] in nodes  # bound by kube-scheduler to a fake GPU node
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("LLMTrainingJob", "gang", job["metadata"]["uid"])

    conditions = {c["type"]: c["status"] for c in job["status"]["conditions"]}
    assert conditions == {"Created": "True", "Running": "True", "GangScheduled": "True",  # the harness serves the Workload API
                          "Ready": "True", "Reconciling": "False"}  # kstatus (health.py): a running job is Current
    events = cp.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=gang")["items"]
    assert {"PodsCreated", "AllWorkersRunning"} <= {e["reason"] for e in events}

    # rank 0's training metrics reach the status and the printer columns: serve the trainer's own
    # metrics registry at worker 0's (fake, loopback-range) pod IP, where the operator scrapes it
    from prometheus_client import start_http_server

    from llm_trainer.metrics import Metrics

    pod_ip = cp.get_json("pod", "gang-worker-0", "-n", namespace)["status"]["podIP"]
    metrics = Metrics(port=None, info={"model": "tiny"})
    metrics.step.set(4)
    metrics.loss.set(3.25)
    metrics.eval_loss.set(3.5)
    metrics.tokens_per_second.set(1000.0)
    metrics.last_checkpoint_step.set(2)
    server, thread = start_http_server(29600, addr=pod_ip, registry=metrics.registry)
    try:
        job = cp.wait_for(lambda: (j := get_job(cp, namespace, "gang"))["status"].get("progress", {}).get("step") == 4 and j,
                          timeout=30, what="progress from rank 0's metrics")
        assert job["status"]["progress"]["tokensPerSecond"] == 1000.0
        assert job["status"]["lastCheckpoint"]["step"] == 2
        table = cp.kubectl("get", "ltj", "gang", "-n", namespace).stdout.splitlines()
        assert table[0].split() == ["NAME", "PHASE", "NODES", "STEP", "LOSS", "RESTARTS", "AGE"]
        assert table[1].split()[:6] == ["gang", "Running", "2/2", "4/10", "3.25", "0"]
        assert job["status"]["progress"]["evalLoss"] == 3.5
        wide = cp.kubectl("get", "ltj", "gang", "-n", namespace, "-o", "wide").stdout.splitlines()
        assert wide[0].split()[:7] == ["NAME", "PHASE", "NODES", "STEP", "LOSS", "EVAL", "LOSS"]
        assert wide[1].split()[:6] == ["gang", "Running", "2/2", "4/10", "3.25", "3.5"]
    finally:
        server.shutdown()


def test_job_succeeds_when_all_workers_exit_zero(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("done"), namespace)
    wait_phase(cp, operator, namespace, "done", "Running")
    # what docs/lifecycle.md promises: kubectl wait reads the kstatus conditions (health.py)
    cp.kubectl("wait", "-n", namespace, "--for=condition=Ready", "ltj/done", "--timeout=30s")
    assert kstatus(get_job(cp, namespace, "done")) == "Current"  # a running job is healthy, as a running batch Job
    for pod in ("done-worker-0", "done-worker-1"):
        finish_pod(cp, namespace, pod, 0)
    cp.kubectl("wait", "-n", namespace, "--for=condition=Succeeded", "ltj/done", "--timeout=60s")
    job = wait_phase(cp, operator, namespace, "done", "Succeeded")
    assert {c["type"]: c["status"] for c in job["status"]["conditions"]}["Ready"] == "True"
    assert kstatus(job) == "Current"
    assert job["status"]["completionTime"] >= job["status"]["startTime"]
    assert {c["type"]: c["status"] for c in job["status"]["conditions"]}["Succeeded"] == "True"


def test_job_fails_with_the_failed_pod_and_exit_code(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("crash", runPolicy={"backoffLimit": 0}), namespace)
    wait_phase(cp, operator, namespace, "crash", "Running")
    finish_pod(cp, namespace, "crash-worker-1", 137)
    job = wait_phase(cp, operator, namespace, "crash", "Failed")
    failure = job["status"]["failure"]
    assert failure["pod"] == "crash-worker-1" and failure["rank"] == 1 and failure["exitCode"] == 137 and failure["reason"] == "Error"
    reasons = {c["type"]: c["reason"] for c in job["status"]["conditions"] if c["status"] == "True"}
    assert reasons["Failed"] == "BackoffLimitExceeded" and reasons["Stalled"] == "BackoffLimitExceeded"  # kstatus: Failed
    cp.kubectl("wait", "-n", namespace, "--for=condition=Stalled", "ltj/crash", "--timeout=10s")
    assert kstatus(job) == "Failed"
    assert failure["node"]
    # cleanPodPolicy Running (default): the surviving worker is removed, the failed one kept for logs
    cp.wait_for(lambda: [p["metadata"]["name"] for p in job_pods(cp, namespace, "crash")] == ["crash-worker-1"], timeout=60, what="cleanup")


def test_deleting_the_job_removes_every_child(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("gc", launcher={"mode": "ssh"}), namespace)
    wait_phase(cp, operator, namespace, "gc", "Running")
    secret = cp.get_json("secret", "gc-ssh", "-n", namespace)
    assert base64.b64decode(secret["data"]["id_ed25519"]).startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    cp.kubectl("delete", "ltj", "gc", "-n", namespace, "--wait=true", timeout=60)

    def children_gone():
        items = cp.get_json("configmaps,services,secrets,pods", "-n", namespace, "-l", "llmtraining.dev/job-name=gc")["items"]
        return not items

    cp.wait_for(children_gone, timeout=90, what="garbage collection of the job's children")


def test_operator_killed_while_creating_converges_without_duplicates(control_plane, operator, namespace):
    cp = control_plane
    nodes = 12
    cp.apply(job_manifest("restart", nodes=nodes, slots=1), namespace)
    # kill as soon as the first child exists, i.e. in the middle of creating the gang
    cp.wait_for(lambda: cp.kubectl("-n", namespace, "get", "configmap", "restart-config", check=False).returncode == 0,
                timeout=60, interval=0.05, what="first child")
    operator.kill()
    pods_at_kill = len(job_pods(cp, namespace, "restart"))
    print(f"operator killed with {pods_at_kill}/{nodes} pods created", file=sys.stderr)
    operator.start()
    job = wait_phase(cp, operator, namespace, "restart", "Running", timeout=120)
    names = sorted(p["metadata"]["name"] for p in job_pods(cp, namespace, "restart"))
    assert names == sorted(f"restart-worker-{i}" for i in range(nodes))
    assert len(cp.get_json("configmaps", "-n", namespace, "-l", "llmtraining.dev/job-name=restart")["items"]) == 1
    assert job["status"]["nodesReady"] == f"{nodes}/{nodes}"
    # Kopf's bookkeeping lives under our annotation prefix
    annotations = job["metadata"].get("annotations", {})
    assert not [k for k in annotations if k.startswith("kopf.zalando.org")]
    assert not job["metadata"].get("finalizers")  # deleting a job never waits for the operator


def test_pods_are_admitted_under_restricted_pod_security(control_plane, operator, namespace):
    cp = control_plane
    cp.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted", "--overwrite")
    cp.apply(job_manifest("restricted"), namespace)
    job = wait_phase(cp, operator, namespace, "restricted", "Running")
    assert job["status"]["nodesReady"] == "2/2"


def test_status_is_written_only_on_change(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("quiet"), namespace)
    job = wait_phase(cp, operator, namespace, "quiet", "Running")
    version = job["metadata"]["resourceVersion"]
    # pod events that change nothing the status shows must not rewrite the status
    cp.kubectl("-n", namespace, "label", "pod", "quiet-worker-0", "touched=yes")
    time.sleep(3)
    assert get_job(cp, namespace, "quiet")["metadata"]["resourceVersion"] == version


def test_recreated_namesake_never_inherits_the_old_jobs_pods(control_plane, operator, namespace):
    cp = control_plane
    cp.apply(job_manifest("again", runPolicy={"backoffLimit": 0}), namespace)
    wait_phase(cp, operator, namespace, "again", "Running")
    finish_pod(cp, namespace, "again-worker-1", 137)
    old = wait_phase(cp, operator, namespace, "again", "Failed")
    # delete without waiting for the garbage collector, and submit the same name again at once
    cp.kubectl("delete", "ltj", "again", "-n", namespace, "--wait=false")
    cp.apply(job_manifest("again"), namespace)
    new = wait_phase(cp, operator, namespace, "again", "Running", timeout=120)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert "failure" not in new["status"]
    for pod in job_pods(cp, namespace, "again"):
        assert pod["metadata"]["ownerReferences"][0]["uid"] == new["metadata"]["uid"]
