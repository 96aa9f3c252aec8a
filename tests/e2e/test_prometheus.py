"""The metrics as an ML engineer sees them: Debian's real Prometheus discovers the job's pods through the API
server (as kubernetes_sd would) with the chart's PodMonitor relabeling, scrapes a real trainer run (DeepSpeed on CPU ranks, serving at
the kwok pod's IP) and the operator, and every query of the chart's Grafana dashboard is evaluated. Then the
run's termination message ends the pod, and the job's status equals the run's summary.json."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from llm_operator.lifecycle import status_figure
from operator_harness import get_job, wait_phase

REPO = Path(__file__).resolve().parents[2]
STEPS = 40
MESSAGE_ANNOTATION = "kwok.llmtraining.dev/termination-message"
NO_DATA_EXPECTED = {"MFU"}  # CPU: the peak is unknown, so MFU is absent by design


@pytest.fixture(autouse=True)
def prometheus_installed():
    """Installed by the test set-up (hack/test-deps-apt.txt): missing is a failure, not a skip."""
    if not shutil.which("prometheus"):
        pytest.fail("prometheus is not installed: run ./dev setup (it installs hack/test-deps-apt.txt)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest(name: str) -> dict:
    return {"apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": name}, "spec": {
        "image": "trainer:test", "accelerator": "cpu", "nodes": 1, "slotsPerNode": 2,
        "podTemplate": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        "model": {"preset": "tiny", "seqLen": 32}, "data": {"format": "synthetic"},
        "training": {"steps": STEPS, "microBatchSize": 2, "globalBatchSize": 8, "precision": "fp32", "zeroStage": 1,
                     "learningRate": 0.01, "warmupSteps": 3, "logIntervalSteps": 1, "compile": False, "seed": 7,
                     "evalIntervalSteps": 10, "evalSteps": 2},
        "checkpoint": {"intervalSteps": 20, "keep": 2},
        "monitoring": {"port": free_port()}}}  # not the default: nothing else on this machine may hold it


def label(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(pod: dict) -> list[dict]:
    """What Prometheus' kubernetes_sd (role: pod) discovers for a pod: one target per container port with its
    __meta_kubernetes_* labels. Debian's prometheus is built without kubernetes_sd, so the test reads the pod
    from the API server and hands the same targets over through file_sd."""
    meta, spec = pod["metadata"], pod["spec"]
    pod_labels = {"__meta_kubernetes_namespace": meta["namespace"], "__meta_kubernetes_pod_name": meta["name"],
                  "__meta_kubernetes_pod_ip": pod["status"]["podIP"], "__meta_kubernetes_pod_phase": pod["status"]["phase"],
                  "__meta_kubernetes_pod_node_name": spec.get("nodeName", "")}
    for key, value in meta.get("labels", {}).items():
        pod_labels[f"__meta_kubernetes_pod_label_{label(key)}"] = value
        pod_labels[f"__meta_kubernetes_pod_labelpresent_{label(key)}"] = "true"
    return [{"targets": [f"{pod['status']['podIP']}:{port['containerPort']}"],
             "labels": {**pod_labels, "__meta_kubernetes_pod_container_name": container["name"],
                        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"])}}
            for container in spec["containers"] for port in container.get("ports", [])]


def podmonitor_scrape_config(cp, pods: list[dict], tmp: Path) -> dict:
    """The chart's PodMonitor as the Prometheus Operator turns it into a scrape config: its selector, port and
    target labels, then the chart's own relabelings."""
    helm = Path(cp.bin_dir) / "helm"
    rendered = subprocess.run([str(helm), "template", "llmto", str(REPO / "charts" / "llm-training-operator"), "-n", "llm-system",
                               "--set", "monitoring.podMonitor.enabled=true"], capture_output=True, text=True, check=True).stdout
    (pm,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "PodMonitor"]
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    relabel = [{"source_labels": [f"__meta_kubernetes_pod_label_{label(k)}", f"__meta_kubernetes_pod_labelpresent_{label(k)}"],
                "regex": f"({v});true", "action": "keep"} for k, v in pm["spec"]["selector"]["matchLabels"].items()]
    relabel += [
        {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": endpoint["port"], "action": "keep"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": f"{pm['metadata']['namespace']}/{pm['metadata']['name']}"},
        {"target_label": "endpoint", "replacement": endpoint["port"]},
    ]
    relabel += [{re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), k): v for k, v in r.items()} for r in endpoint.get("relabelings", [])]
    (tmp / "pods.json").write_text(json.dumps([t for pod in pods for t in pod_targets(pod)]))
    return {"job_name": f"podMonitor/{pm['metadata']['namespace']}/{pm['metadata']['name']}/0", "metrics_path": endpoint["path"],
            "file_sd_configs": [{"files": [str(tmp / "pods.json")]}], "relabel_configs": relabel}


class Prometheus:
    def __init__(self, config: dict, tmp: Path):
        self.port = free_port()
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(tmp / "prometheus.log", "w")
        self.proc = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at else {})}
        url = f"http://127.0.0.1:{self.port}/api/v1/query?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # a bad query: 400 with the error in the body
            body = json.loads(exc.read())
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return body["data"]["result"]

    def poll(self, expr: str) -> list[dict]:
        """For waiting: a slow answer (a loaded machine) is no answer yet."""
        try:
            return self.query(expr)
        except OSError:
            return []

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def promtool_check(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{url}:\n{result.stdout}{result.stderr}"


def start_trainer(job: dict, out: Path) -> subprocess.Popen:
    """The pods' path on this machine: llm-train launch → DeepSpeed's runner → 2 CPU ranks of llm_trainer.worker,
    serving /metrics on the job's monitoring.port on every address, the kwok pod's IP (127.244.x.y) included."""
    out.mkdir(parents=True)
    (out / "job.yaml").write_text(yaml.safe_dump(job))
    (out / "hostfile").write_text("localhost slots=2\n")
    (out / "termination-log").write_text("")
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", LLMTRAIN_FINAL_SCRAPE_SECONDS="8")
    env.pop("LLMTRAIN_METRICS_PORT", None)
    deepspeed = [str(Path(sys.executable).with_name("deepspeed")), f"--hostfile={out / 'hostfile'}", "--no_ssh", "--node_rank=0",
                 "--master_addr=127.0.0.1", f"--master_port={free_port()}", "--module", "llm_trainer.worker",
                 "--job", str(out / "job.yaml"), "--output-dir", str(out)]
    log = open(out / "trainer.log", "w")
    return subprocess.Popen([sys.executable, "-m", "llm_trainer.launch", "--marker-dir", str(out / "markers"),
                             "--termination-log", str(out / "termination-log"), "--", *deepspeed],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def dashboard_queries(namespace: str, job: str) -> list[tuple[str, str]]:
    dash = json.loads((REPO / "charts" / "llm-training-operator" / "files" / "grafana-dashboard.json").read_text())
    return [(panel["title"], target["expr"].replace("$namespace", namespace).replace("$job", job)
             .replace("$__rate_interval", "20s")) for panel in dash["panels"] for target in panel["targets"]]


def test_prometheus_sees_the_whole_run_and_the_status_its_end(control_plane, operator, namespace, tmp_path):
    cp = control_plane
    job = manifest("watched")
    cp.apply(job, namespace)
    wait_phase(cp, operator, namespace, "watched", "Running")
    pods = cp.get_json("pods", "-n", namespace)["items"]
    pod_ip = pods[0]["status"]["podIP"]
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [podmonitor_scrape_config(cp, pods, tmp_path),
                                 {"job_name": "llm-training-operator", "static_configs": [{
                                     "targets": [f"127.0.0.1:{operator.metrics_port}"], "labels": {"namespace": "llm-system"}}]}]}
    prometheus = Prometheus(config, tmp_path)
    trainer = start_trainer(job, tmp_path / "run")
    try:
        cp.wait_for(prometheus.ready, timeout=60, what="prometheus ready")
        cp.wait_for(lambda: prometheus.poll('llmtrain_step{llmtraining_job="watched"}'), timeout=240, what="the trainer scraped")
        promtool_check(f"http://{pod_ip}:{job['spec']['monitoring']['port']}/metrics")
        promtool_check(f"http://127.0.0.1:{operator.metrics_port}/metrics")

        def final_step_scraped():
            result = prometheus.poll('llmtrain_step{llmtraining_job="watched"} and on() llmtrain_finished == 1')
            return time.time() if result and float(result[0]["value"][1]) == STEPS else None

        ended_at = cp.wait_for(final_step_scraped, timeout=300, interval=0.5, what="the final step scraped (the endpoint lingers)")
        assert trainer.wait(120) == 0, (tmp_path / "run" / "trainer.log").read_text()[-3000:]
    except BaseException:
        prometheus.stop()
        raise
    finally:
        if trainer.poll() is None:
            trainer.kill()
    try:
        # once the run is over: the last value Prometheus holds is the final step, not one a scrape before it
        last = prometheus.query('last_over_time(llmtrain_step{llmtraining_job="watched"}[10m])')
        assert [float(r["value"][1]) for r in last] == [STEPS]
        empty = []
        for title, expr in dashboard_queries(namespace, "watched"):
            result = prometheus.query(expr, at=ended_at)  # fails on a query error
            if not result and title not in NO_DATA_EXPECTED:
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard panels without data:\n" + "\n".join(empty)
        labels = prometheus.query('llmtrain_info{llmtraining_job="watched"}', at=ended_at)[0]["metric"]
        assert labels["architecture"] == "gpt" and labels["namespace"] == namespace and labels["pod"] == "watched-worker-0"
    finally:
        prometheus.stop()

    # the pod ends with the run's own termination message: the status shows the end, equal to summary.json
    message = (tmp_path / "run" / "termination-log").read_text()
    cp.kubectl("-n", namespace, "annotate", "pod", "watched-worker-0", f"{MESSAGE_ANNOTATION}={message}", f"{cp.EXIT_CODE_ANNOTATION}=0")
    status = wait_phase(cp, operator, namespace, "watched", "Succeeded")["status"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert status["progress"]["step"] == summary["steps"] == STEPS
    # status.progress shows 4 significant digits (kubectl get ltj), the summary the exact figures
    assert status["progress"]["loss"] == status_figure(summary["final_loss"])
    assert status["progress"]["tokensPerSecond"] == status_figure(summary["tokens_per_second"])
    assert status["progress"]["evalLoss"] == status_figure(summary["eval_loss"]) and [e["step"] for e in summary["eval_losses"]] == [10, 20, 30, 40]
    assert status["lastCheckpoint"]["tag"] == summary["tag"]
    assert get_job(cp, namespace, "watched")["status"]["firstStepTime"]
