"""spec.program on this machine: the ranks each launcher starts and what they see (issue 18), and the injected
launcher running without our package's dependencies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).parent / "programs" / "rank_probe.py"


def run_job(tmp_path: Path, command: list[str], launcher: str, nodes: int = 2, slots: int = 2) -> tuple[subprocess.CompletedProcess, list[dict]]:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "llmtraining.dev/v1alpha1", "kind": "LLMTrainingJob", "metadata": {"name": "probe"},
        "spec": {"image": "x", "nodes": nodes, "slotsPerNode": slots, "accelerator": "cpu",
                 "program": {"command": command, "launcher": launcher}}}))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "llm_trainer.cli", "run", str(manifest), "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen = [json.loads(p.read_text()) for p in sorted((out / "checkpoints").glob("seen-*.json"))]
    return proc, seen


def ranks_of_world(output: str, world_size: int) -> list[int]:
    """The ranks whose `rank R of world size W` line is in the output, not only at line starts: ranks share stdout,
    and a program that prints under PYTHONUNBUFFERED writes a line and its newline apart (CI saw rank 2's line
    land after rank 3's)."""
    return sorted(int(rank) for rank in re.findall(rf"rank (\d+) of world size {world_size}\b", output))


def test_ranks_of_world_reads_a_rank_line_that_another_rank_ran_into():
    """The output CI printed: rank 3 wrote its line, rank 2 its line, then both newlines."""
    output = "rank 0 of world size 4 (local rank 0, node 0)\nrank 3 of world size 4 (local rank 1, node 1)rank 2 of world size 4 (local rank 0, node 1)\n\n"
    assert ranks_of_world(output, 4) == [0, 2, 3]


def test_torchrun_starts_nodes_times_slots_ranks_that_form_one_world(tmp_path):
    proc, seen = run_job(tmp_path, ["python3", str(PROBE), "--distributed"], "torchrun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(s["dist_rank"] for s in seen) == [0, 1, 2, 3]
    assert {s["dist_world_size"] for s in seen} == {4} and {s["WORLD_SIZE"] for s in seen} == {"4"}
    assert sorted((s["NODE_RANK"], s["LOCAL_RANK"]) for s in seen) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]


def test_exec_runs_the_command_once_per_pod_with_the_gang_shape_and_expands_vars(tmp_path):
    proc, seen = run_job(tmp_path, ["python3", str(PROBE), "--machine_rank", "$(NODE_RANK)", "--of", "$(NNODES)", "$$(NODE_RANK)",
                                    "$(UNDEFINED_VAR)"], "exec")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(s["NODE_RANK"] for s in seen) == ["0", "1"]
    assert {(s["NNODES"], s["NPROC_PER_NODE"], s["WORLD_SIZE"], s["PET_NNODES"], s["LLMTRAIN_RESTART"]) for s in seen} == {("2", "2", "4", "2", "0")}
    assert sorted(s["argv"][1] for s in seen) == ["0", "1"]
    # each pod's launcher started its progress receiver and gave the program its URL and the report helper
    assert all(s["KUBEFLOW_TRAINER_SERVER_URL"].startswith("http://127.0.0.1:") for s in seen)
    assert [s["reported"] for s in seen] == [True, True]
    assert {tuple(s["argv"][2:]) for s in seen} == {("--of", "2", "$(NODE_RANK)", "$(UNDEFINED_VAR)")}  # as the kubelet expands


def test_the_plain_deepspeed_program_trains_at_world_size_4_on_cpu(tmp_path):
    example = REPO / "examples" / "programs" / "train_deepspeed.py"
    proc, _ = run_job(tmp_path, ["python3", str(example), "--steps", "3", "--save-every", "3"], "deepspeed")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "done: 3 steps at world size 4" in output
    assert ranks_of_world(output, 4) == [0, 1, 2, 3]
    assert (tmp_path / "out" / "checkpoints" / "latest").read_text().strip() == "global_step3"


def test_a_command_missing_from_the_image_fails_at_once_as_bad_input_naming_it(tmp_path):
    proc, _ = run_job(tmp_path, ["no-such-trainer", "--x"], "exec", nodes=1, slots=1)
    assert proc.returncode == 5
    assert "program.command: 'no-such-trainer' is not in the image" in proc.stderr


def test_the_injected_launcher_needs_no_site_packages(tmp_path):
    """What the init container copies runs under `python -S`: no pydantic, PyYAML, psutil or torch."""
    dest = tmp_path / "llmtrain"
    subprocess.run([sys.executable, "-m", "llm_trainer.inject", str(dest)], check=True)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(dest)}
    ok = subprocess.run([sys.executable, "-S", "-m", "llm_trainer.launch", "--termination-log", str(tmp_path / "t.log"),
                         "--check-command", "true", "--progress-port", "0", "--progress-token", str(tmp_path / "token"), "--",
                         "python3", "-S", "-c", "import llmtraining_report; print('program ran', llmtraining_report.step(1, loss=2.0))"],
                        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert ok.returncode == 0 and "program ran True" in ok.stdout, ok.stderr  # the receiver took the report
    failing = subprocess.run([sys.executable, "-S", "-m", "llm_trainer.launch", "--termination-log", str(tmp_path / "t.log"),
                              "--", "python3", "-S", "-c", "raise SystemExit(7)"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert failing.returncode == 7


@pytest.mark.parametrize("value, expected", [("$(A)", "1"), ("x$(A)y$(B)", "x1y2"), ("$$(A)", "$(A)"), ("$(NOPE)", "$(NOPE)"),
                                             ("$$", "$"), ("$(A", "$(A"), ("a$b", "a$b")])
def test_var_expansion_matches_kubernetes(value, expected):
    from llm_trainer.program_run import expand

    assert expand(value, {"A": "1", "B": "2"}) == expected


def test_without_psutil_the_ranks_are_found_in_proc_so_sigterm_reaches_them_first(tmp_path):
    """forward()'s first SIGTERM goes to the runner's ranks only; in a program's image psutil may be absent."""
    import time

    from llm_trainer.launch.supervisor import proc_children_of

    marker = f"fake.launcher.{os.getpid()}"
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; c = subprocess.Popen(['sleep', '30']); "
                               "print(c.pid, flush=True); time.sleep(30)", marker], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(0.2)
        assert [p.pid for p in proc_children_of(marker)] == [child]
    finally:
        if child:
            os.kill(child, 9)
        parent.kill()
        parent.wait()


@pytest.mark.parametrize("lines, expected", [
    (["Traceback (most recent call last):", '  File "t.py", line 3', "ValueError: bad shard 7"], {"rank": "? on node 1", "error": "ValueError: bad shard 7"}),
    (["[rank3]: Traceback (most recent call last):", "[rank3]: torch.distributed.DistBackendError: NCCL error", "[launch.py:1] exits"],
     {"rank": "3", "error": "torch.distributed.DistBackendError: NCCL error"}),
    (["RuntimeError: boom", "Failures:", "  <NO_OTHER_FAILURES>", "Root Cause (first observed failure):", "[0]:", "  rank      : 2 (local_rank: 0)"],
     {"rank": "2", "error": "RuntimeError: boom"}),
    (["just some output", "exit now"], None),
])
def test_the_failing_rank_and_its_last_exception_line_come_from_the_stderr_tail(lines, expected):
    from llm_trainer.launch.errortail import failing_rank_error

    assert failing_rank_error(lines, "1") == expected


def test_a_failing_program_names_its_exception_in_the_termination_message(tmp_path):
    from llm_trainer.launch import main

    log = tmp_path / "termination-log"
    log.write_text("")
    code = main(["--termination-log", str(log), "--check-command", sys.executable, "--", sys.executable, "-c",
                 "import sys; print('ok so far'); raise ValueError('bad shard 7')"])
    assert code == 1
    assert "ValueError: bad shard 7" in log.read_text() and "command exited with status 1" in log.read_text()


@pytest.mark.parametrize("how, expected", [
    ("kill", "rank 1: killed by SIGKILL"),
    ("raise", "rank 1: ValueError: bad shard 7"),
    ("kill-in-group", "rank 1: killed by SIGKILL"),
])
def test_under_deepspeeds_runner_the_rank_that_failed_first_is_named(tmp_path, monkeypatch, capfd, how, expected):
    """DeepSpeed's runner prints no rank prefix: the launcher learns from /proc which rank exited first (rank 1 here;
    rank 0 is then terminated by the runner), instead of `? on node N`. kill-in-group: as in a pod whose rank was
    SIGKILLed mid-run, rank 0's collective loses its peer and prints the last traceback (`[rank0]: RuntimeError: ...
    Connection closed by peer`, prefixed by torch.distributed's excepthook): still rank 1 is named, not its victim."""
    from llm_trainer.launch import main

    program = tmp_path / "fails.py"
    program.write_text(textwrap.dedent(f"""
        import os, signal, sys, time
        if {how!r} == "kill-in-group":
            import torch.distributed as dist
            dist.init_process_group("gloo")
            dist.barrier()
            if os.environ["RANK"] == "1":
                os.kill(os.getpid(), signal.SIGKILL)
            dist.barrier()  # rank 0: gloo's "Connection closed (or reset) by peer"
        if os.environ["RANK"] == "1":
            time.sleep(1)  # both ranks started: the runner's own death, not a start-up failure
            if {how!r} == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError("bad shard 7")
        time.sleep(60)
    """))
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    port = 29500 + os.getpid() % 1000
    code = main(["--termination-log", str(log), "--check-command", "deepspeed", "--", "deepspeed", "--num_gpus=2",
                 f"--master_port={port}", str(program)])
    message = log.read_text()
    assert code != 0, message
    assert expected in message, message
    if how == "kill-in-group":
        assert "by peer" in capfd.readouterr().err  # the victim's traceback (gloo: "Connection closed/reset by peer") was there to mislead


def test_the_hf_trainer_program_trains_across_2_pods_and_resumes_from_its_checkpoint(tmp_path):
    """examples/programs/train_hf_trainer.py under torchrun (2 "pods" × 1 rank, DDP over gloo with use_cpu=True); run
    again on the same checkpoint dir with more steps, as a restarted gang does, it resumes with resume_from_checkpoint."""
    example = REPO / "examples" / "programs" / "train_hf_trainer.py"
    proc, _ = run_job(tmp_path, ["python3", str(example), "--steps", "4", "--save-steps", "2"], "torchrun", nodes=2, slots=1)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert ranks_of_world(output, 2) == [0, 1]
    assert "done: 4 steps at world size 2" in output and "resumed from" not in output
    proc, _ = run_job(tmp_path, ["python3", str(example), "--steps", "6", "--save-steps", "2"], "torchrun", nodes=2, slots=1)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "resumed from checkpoint-4 (restart 0)" in output and "done: 6 steps at world size 2" in output
