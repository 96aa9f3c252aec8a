"""Every shell command README.md and docs/*.md show is run here as a user would run it, or excused with a reason.

The commands are read from the docs' fenced sh/bash/shell/console blocks (continuation lines joined, comments and
`$ ` prompts stripped). COMMANDS maps each command, by the first pattern that matches it, to the test that runs it
or to the reason it cannot run on this machine. A command no pattern matches fails
test_every_documented_command_is_run_or_excused, so a new command in the docs is never silently untested; a pattern
no command matches fails it too (a stale excuse hides nothing). To extend: add one row.

A merge that loses a command's implementation (`./dev cluster` lost in 011b1fa) fails the runner of that command.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
import yaml

if TYPE_CHECKING:
    from conftest import ControlPlane

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REALNODE_LOCK = "/tmp/llmto-realnode.lock"  # one real node per machine (bridge, containerd): see hack/realnode.sh
REALNODE_BRIDGE = "llmto0"  # hack/realnode.sh's default bridge; its iptables chains are LLMTO-<bridge>


@dataclass(frozen=True)
class Excused:
    reason: str


# (pattern, the test that runs the command | why it is not run); first match wins.
COMMANDS: list[tuple[str, str | Excused]] = [
    (r"^\./dev train$", "test_dev_train_twice_prints_the_readme_transcript"),
    (r"^\./dev test\b", Excused("it is this suite (CI runs .ci/run, which is ./dev test)")),
    (r"^\./dev setup$", Excused("the suite runs in the virtualenv ./dev setup made; ./dev train and ./dev cluster call it")),
    (r"^\./dev cluster$", "test_dev_cluster_trains_the_example_and_down_leaves_nothing"),
    (r"^\./dev cluster down$", "test_dev_cluster_trains_the_example_and_down_leaves_nothing"),
    (r"^eval \"\$\(hack/controlplane\.sh env\)\"$", "test_dev_cluster_trains_the_example_and_down_leaves_nothing"),
    # `get ltj -w` and `logs -f` follow forever: the test runs them without -w/-f once the job has ended
    (r"^kubectl (apply -f|get ltj|logs -f) (examples/)?tiny-cpu-cluster",
     "test_dev_cluster_trains_the_example_and_down_leaves_nothing"),
    (r"^llm-operator render -f examples/", "test_llm_operator_commands_and_validate_every_example"),
    (r"^llm-operator crd > ", "test_llm_operator_commands_and_validate_every_example"),
    (r"^helm install llm-training-operator charts/llm-training-operator (-n|--namespace) llm-training-operator "
     r"--create-namespace( --set image\.repository=\S+)?$", "test_install_commands_on_the_control_plane"),
    (r"^kubectl (apply|delete) -k config/default$", "test_install_commands_on_the_control_plane"),
    (r"^helm uninstall llm-training-operator -n llm-training-operator$", "test_install_commands_on_the_control_plane"),
    # the local control plane walk-through (README "Try the operator on a local control plane")
    (r"^export PATH=|^hack/controlplane\.sh (build|up|down|bin-dir)|^eval \"\$\(hack/controlplane\.sh up",
     Excused("the e2e fixtures run hack/controlplane.sh build/up/down for every e2e test (tests/e2e/conftest.py)")),
    (r"^kubectl apply -f crds/?$|^kubectl apply --server-side --force-conflicts -f crds/",
     Excused("the crd fixture applies crds/ server-side (tests/e2e/operator_harness.py)")),
    (r"^llm-operator run ", Excused("the operator fixture runs llm-operator run (tests/e2e/operator_harness.py)")),
    (r"^kubectl get ltj -w$|^kubectl apply -f examples/ssh-launcher\.yaml$|^kubectl annotate pod .*kwok\.llmtraining\.dev/exit-code",
     Excused("ssh launcher jobs on kwok nodes with the exit annotation: tests/e2e/test_operator.py")),
    (r"^hack/images\.sh import ", Excused("./dev cluster runs it (test_dev_cluster_...) as do test_real_node.py's fixtures")),
    # commands that need what this machine has not
    (r"^docker build ", Excused("no Docker here: hack/images.sh builds the same Dockerfile targets with buildah")),
    (r"gpt2-1\.3b-multinode|^kubectl create namespace research$|-n research",
     Excused("4 × 8 GPUs with InfiniBand; the manifest is validated by test_llm_operator_commands_and_validate_...")),
    (r"^kubectl -n llm-training-operator rollout (status|restart) deployment/llm-training-operator$",
     Excused("the operator's image is not on the kwok nodes; test_real_node.py rolls the chart out on the real node")),
    (r"--set 'watchNamespaces=|--set monitoring\.|--set gang\.(volcano|coscheduling)",
     Excused("values covered by tests/e2e/test_helm.py and test_prometheus.py (Volcano/coscheduling: not installed)")),
    (r"^kubectl (create namespace ml|-n ml )",
     Excused("examples/tiny-cpu.yaml in a cluster: the same run as examples/tiny-cpu-cluster.yaml, run by ./dev cluster's test")),
    (r"^kubectl delete ltj --all -A$|^kubectl delete crd llmtrainingjobs\.llmtraining\.dev$|"
     r"^kubectl delete namespace llm-training-operator$",
     Excused("would delete the jobs and the CRD the session's other e2e tests share")),
    (r"^kubectl api-resources --api-group=scheduling\.k8s\.io$", Excused("tests/e2e/test_gang_scheduling.py checks the API")),
    (r"^kubectl -n team-a get (ltj|workloads)", Excused("Kueue queueing: tests/e2e/test_kueue.py")),
    (r"^kubectl wait --for=condition=(Ready|Succeeded|Stalled) ltj/",
     Excused("tests/e2e/test_operator.py runs kubectl wait on Ready, Succeeded and Stalled of live jobs")),
    (r"^curl -s -X POST \"\$KUBEFLOW_TRAINER_SERVER_URL\"", "test_progress_report_with_curl_reaches_the_receiver"),
    (r"^python benchmarks/", Excused("benchmarks print figures for minutes; tests/e2e/test_bench_operator.py runs one small")),
]


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) of every command in the docs' shell blocks."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.finditer(r"^( *)```(?:sh|bash|shell|console)\n(.*?)^\1```", text, re.M | re.S):
            first_line = text.count("\n", 0, block.start()) + 2
            joined = re.sub(r"\\\n\s*", "", block.group(2))
            for offset, line in enumerate(joined.splitlines()):
                line = re.sub(r"^\s*\$ ", "", line).strip()
                line = _without_comment(line)
                if line and not line.startswith("#"):
                    found.append((f"{doc.relative_to(REPO)}:{first_line + offset}", line))
    return found


def _without_comment(line: str) -> str:
    """The line without its trailing `# comment` (a '#' inside quotes stays)."""
    for hash_at in (m.start() for m in re.finditer(r"\s#", line)):
        before = line[:hash_at]
        if before.count("'") % 2 == 0 and before.count('"') % 2 == 0:
            return before.strip()
    return line.strip()


def runner_of(command: str) -> str | Excused | None:
    return next((target for pattern, target in COMMANDS if re.search(pattern, command)), None)


def documented(test_name: str) -> list[str]:
    """The commands the docs show that COMMANDS gives to test_name (what that test must run)."""
    return [command for _, command in documented_commands() if runner_of(command) == test_name]


def test_every_documented_command_is_run_or_excused():
    commands = documented_commands()
    assert len(commands) > 20, commands  # the extraction works at all
    unlisted = [f"{where}: {command}" for where, command in commands if runner_of(command) is None]
    assert not unlisted, "commands the docs show that no test runs and COMMANDS does not excuse:\n" + "\n".join(unlisted)
    stale = [pattern for pattern, _ in COMMANDS if not any(re.search(pattern, c) for _, c in commands)]
    assert not stale, f"COMMANDS rows that match no documented command (remove them): {stale}"
    missing = {t for _, t in COMMANDS if isinstance(t, str)} - set(globals())
    assert not missing, f"COMMANDS names tests that do not exist: {missing}"


# ============================================================================================ runners
def _run(command: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """A documented command line as a user types it: bash in the checkout; stdout and stderr together."""
    with tempfile.TemporaryFile("w+") as out:
        try:
            rc = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -1
        out.seek(0)
        return subprocess.CompletedProcess(command, rc, out.read(), "")


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"$ {proc.args}\nexit {proc.returncode}\n" + "\n".join(proc.stdout.splitlines()[-60:])
    return proc.stdout


def _readme_transcripts() -> list[list[str]]:
    """The untyped blocks after the README's `./dev train` paragraph: the first run's lines, then the second's."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("`./dev train` shows"):]
    blocks = re.findall(r"^```\n(.*?)^```", section, re.M | re.S)[:2]
    return [block.splitlines() for block in blocks]


def _line_pattern(shown: str, output_dir: str) -> re.Pattern[str]:
    """A shown line as a pattern: the same words; measured figures (decimals, 30.4K) may differ; runs/tiny-cpu is ours."""
    parts = re.split(r"(\d+\.\d+K?|runs/tiny-cpu)", shown)
    regex = "".join(r"[\d.]+K?" if re.fullmatch(r"\d+\.\d+K?", p) else re.escape(output_dir) if p == "runs/tiny-cpu"
                    else re.escape(p) for p in parts)
    return re.compile(rf"^{regex}$")


def _assert_shows(output: str, shown: list[str], output_dir: str) -> None:
    lines = output.splitlines()
    for line in shown:
        if "|" in line:  # the progress bar: drawn on a terminal only
            continue
        pattern = _line_pattern(line, output_dir)
        assert any(pattern.match(got) for got in lines), f"README shows\n  {line}\nnot printed; got:\n{output}"


def test_dev_train_twice_prints_the_readme_transcript(tmp_path: Path):
    assert documented("test_dev_train_twice_prints_the_readme_transcript") == ["./dev train"]
    first_run, second_run = _readme_transcripts()
    output_dir = str(tmp_path / "tiny-cpu")
    # a terminal gets text; the test's pipe asks for it (the README's transcript is a terminal's)
    command = f"./dev train --output-dir {output_dir} --log-format text"
    _assert_shows(_ok(_run(command, timeout=1200)), first_run, output_dir)
    started = time.monotonic()
    _assert_shows(_ok(_run(command, timeout=300)), second_run, output_dir)
    print(f"second ./dev train answered in {time.monotonic() - started:.1f}s")


def test_llm_operator_commands_and_validate_every_example():
    for command in documented("test_llm_operator_commands_and_validate_every_example"):
        if " > " in command:  # `llm-operator crd > crds/...`: what it would write is what is committed
            produce, target = command.split(" > ")
            assert _ok(_run(produce)) == (REPO / target.strip()).read_text(), f"{command}: the committed file differs"
        else:
            docs = list(yaml.safe_load_all(_ok(_run(command))))
            assert any(d and d.get("kind") == "Pod" for d in docs), f"{command} rendered no Pod"
    examples = sorted((REPO / "examples").glob("*.yaml"))
    assert len(examples) >= 4, examples
    for example in examples:
        _ok(_run(f"llm-train validate {example.relative_to(REPO)}"))


def test_install_commands_on_the_control_plane(control_plane: ControlPlane, crd):
    commands = documented("test_install_commands_on_the_control_plane")
    helm_install = [c for c in commands if c.startswith("helm install")]
    uninstall = [c for c in commands if c.startswith("helm uninstall")]
    kustomize = [c for c in commands if "-k config/default" in c]
    assert helm_install and uninstall and kustomize, commands
    ns = "llm-training-operator"
    deployment = ["get", "deployment", "llm-training-operator", "-n", ns, "-o", "jsonpath={.spec.template.spec.containers[0].image}"]
    try:
        for command in helm_install:
            _ok(_run(command, control_plane.env))
            image = control_plane.kubectl(*deployment).stdout
            wanted = re.search(r"image\.repository=(\S+)", command)
            assert image.startswith(wanted.group(1) + ":" if wanted else "ghcr.io/"), f"{command}: image {image}"
            for command in uninstall:
                _ok(_run(command, control_plane.env))
        applies = [c for c in kustomize if " apply " in c]
        deletes = [c for c in kustomize if " delete " in c]
        assert applies and deletes, kustomize
        for command in applies:
            _ok(_run(command, control_plane.env))
            assert control_plane.kubectl(*deployment).stdout, "kubectl apply -k config/default made no deployment"
        for command in deletes:
            _ok(_run(command, control_plane.env))
    finally:
        control_plane.run("helm", "uninstall", "llm-training-operator", "-n", ns, check=False)
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


# ======================================================================================= ./dev cluster
def test_progress_report_with_curl_reaches_the_receiver(tmp_path: Path):
    """docs/programs.md's curl for programs that are not Python, against the receiver the launcher starts in a pod."""
    from llm_trainer.progress_receiver import start_progress_service

    service = start_progress_service(0, tmp_path / "token")
    try:
        env = {**os.environ, **service.program_env()}
        for command in documented("test_progress_report_with_curl_reaches_the_receiver"):
            assert _ok(_run(command, env=env, timeout=60)).strip() == "ok"
        assert service.state.values["llmtrain_step"] == 12 and service.state.values["llmtrain_total_steps"] == 100
        assert service.state.values["llmtrain_loss"] == 2.5
    finally:
        service.close()


@pytest.fixture(scope="module")
def real_node_lock() -> Iterator[None]:
    """The machine's one real node: held while ./dev cluster's runs; test_real_node.py and helpers' runs wait."""
    with open(REALNODE_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _leftovers(state_dir: str) -> list[str]:
    found = []
    if subprocess.run(["ip", "link", "show", REALNODE_BRIDGE], capture_output=True).returncode == 0:
        found.append(f"bridge {REALNODE_BRIDGE}")
    for table in ("filter", "nat"):
        rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
        found += [f"iptables {table}: {r}" for r in rules.splitlines() if f"LLMTO-{REALNODE_BRIDGE}" in r]
    procs = subprocess.run(["pgrep", "-af", state_dir], capture_output=True, text=True).stdout
    found += [f"process {p}" for p in procs.splitlines() if "pgrep" not in p]
    found += [f"mount {m}" for m in Path("/proc/self/mounts").read_text().splitlines() if state_dir in m]
    return found


def test_dev_cluster_trains_the_example_and_down_leaves_nothing(real_node_lock, tmp_path: Path):
    name = "test_dev_cluster_trains_the_example_and_down_leaves_nothing"
    shown = documented(name)
    for wanted in ("./dev cluster", "./dev cluster down", "kubectl apply -f examples/tiny-cpu-cluster.yaml"):
        assert wanted in shown, shown
    # the user's state dir is the default one; the suite's own control plane may hold that, so ours is private
    state_dir = str(tmp_path / "cp")
    env = {**os.environ, "LLMTO_CP_DIR": state_dir}
    env.pop("KUBECONFIG", None)
    as_user = 'eval "$(hack/controlplane.sh env)" && '
    try:
        started = time.monotonic()
        _ok(_run("./dev cluster", env, timeout=3600))
        print(f"./dev cluster: {time.monotonic() - started:.0f}s")
        again = _ok(_run("./dev cluster", env, timeout=600))  # twice in a row: finds it up, refreshes the rest
        assert "The cluster is up" in again, again
        _ok(_run(as_user + "kubectl apply -f examples/tiny-cpu-cluster.yaml", env))
        deadline = time.monotonic() + 900
        phase = ""
        while phase not in ("Succeeded", "Failed") and time.monotonic() < deadline:
            time.sleep(5)
            phase = _run(as_user + "kubectl get ltj tiny-cpu-cluster -o jsonpath='{.status.phase}'", env).stdout.strip()
        table = _ok(_run(as_user + "kubectl get ltj tiny-cpu-cluster", env))
        logs = _run(as_user + "kubectl logs tiny-cpu-cluster-worker-0", env).stdout
        assert phase == "Succeeded", f"phase {phase!r}\n{table}\n{logs[-3000:]}"
        header, row = table.splitlines()[:2]
        loss = row.split()[header.split().index("LOSS")]
        assert re.fullmatch(r"\d+(\.\d{1,4})?", loss), f"loss shown as {loss!r}, not rounded:\n{table}"
        assert '"event": "complete"' in logs, logs[-3000:]  # the pod's JSON lines: the run's last event
    finally:
        down = _run("./dev cluster down", env, timeout=600)
    _ok(down)
    assert _leftovers(state_dir) == [], "./dev cluster down left these behind"
