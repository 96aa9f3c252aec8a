"""`llm-train run` as a person at a terminal and a log collector meet it: views, reruns, --fresh, refusals.

Real trainings of a 6-step job on CPU ranks (finished; trained again with --fresh, stopped at step 3; resumed;
continued to step 7 on one rank); everything else answers without starting DeepSpeed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llm_operator.api import load_job_file
from llm_trainer import checkpoint, markers, rundir, worker

from trainer_testlib import deep_update, llm_train, write_job

pytestmark = pytest.mark.trainer

JOB = {"metadata": {"name": "tiny-cli"},
       "spec": {"training": {"steps": 6, "warmupSteps": 1}, "checkpoint": {"intervalSteps": 3}}}


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The job trained to the end by `llm-train run` on a terminal."""
    d = tmp_path_factory.mktemp("finished")
    job = write_job(d, JOB)
    run = llm_train("run", job, "--output-dir", d / "out", tty=True)
    assert run.code == 0, run.stdout[-3000:]
    return {"job": job, "out": d / "out", "run": run, "summary": json.loads((d / "out" / "summary.json").read_text())}


@pytest.fixture(scope="module")
def restarted(finished, tmp_path_factory):
    """A copy of the finished run trained again with --fresh and stopped at step 3, its output piped."""
    out = tmp_path_factory.mktemp("restarted") / "out"
    shutil.copytree(finished["out"], out)
    (out / "checkpoints" / "global_step99").mkdir()  # a stale checkpoint must not survive either
    run = llm_train("run", finished["job"], "--output-dir", out, "--fresh", "--stop-at-step", "3")
    assert run.code == 143, run.stdout[-3000:] + run.stderr[-3000:]
    return {"job": finished["job"], "out": out, "run": run}


def test_terminal_view_is_a_bar_and_a_few_readable_lines(finished):
    out, lines, summary = finished["out"], finished["run"].lines, finished["summary"]
    text = "\n".join(lines)
    assert not [line for line in lines if line.startswith("{")], text
    assert "[INFO]" not in text and "built successfully" not in text and "spawned with command" not in text, text
    assert f"tiny-cli: 2 CPU ranks, output {out} (DeepSpeed's log: {out / 'train.log'})" in lines
    assert any(line.startswith("model tiny: ") and "× 2 ranks" in line for line in lines), text
    assert f"checkpoint at step 3: {out / 'checkpoints' / 'global_step3'}" in lines
    assert any(line.startswith("tiny-cli: 100%") and "6/6" in line for line in lines), text  # the bar, finished
    first, last = summary["initial_loss"], summary["final_loss"]
    assert first > last
    assert lines[-3].startswith(f"tiny-cli complete at step 6: loss {first:.2f} → {last:.2f}, "), text
    assert lines[-2:] == [f"model    {out / 'model'}", f"summary  {out / 'summary.json'}"]
    # what the terminal was spared is in the log
    log = (out / "train.log").read_text()
    assert "[INFO]" in log and '{"event": "complete"' in log


def test_second_run_of_a_finished_job_says_so_and_exits_0(finished):
    out, summary = finished["out"], finished["summary"]
    before = {p: p.stat().st_mtime_ns for p in (out / "summary.json", out / "train.log", out / "checkpoints" / "latest")}
    again = llm_train("run", finished["job"], "--output-dir", out, tty=True)
    assert again.code == 0, again.stdout
    assert again.lines == [f"tiny-cli already complete at step 6 (loss {summary['initial_loss']:.2f} → "
                           f"{summary['final_loss']:.2f}): {out}; pass --fresh to train again"]
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing was started, nothing rewritten

    piped = llm_train("run", finished["job"], "--output-dir", out)
    assert piped.code == 0 and piped.stderr == ""
    assert json_lines(piped.stdout) == [{"event": "already_complete", "job": "tiny-cli", "step": 6,
                                         "initial_loss": summary["initial_loss"], "final_loss": summary["final_loss"],
                                         "output_dir": str(out)}]


def test_a_changed_manifest_is_refused_naming_what_changed(finished, tmp_path):
    out = finished["out"]
    changed = write_job(tmp_path, deep_update(JOB, {"spec": {"model": {"preset": "tiny-llama"},
                                                             "training": {"microBatchSize": 1}}}))
    refused = llm_train("run", changed, "--output-dir", out, "--log-format", "text")
    assert refused.code == 1 and refused.stdout == ""
    assert refused.stderr.startswith(f"llm-train: {out} holds a run of tiny-cli whose checkpoint does not fit")
    for change in ('model.architecture: "gpt" → "llama"', "model.nKvHeads: 4 → 2", "training.microBatchSize: 2 → 1"):
        assert f"\n  {change}\n" in refused.stderr, refused.stderr
    assert "Pass --fresh" in refused.stderr and "another --output-dir" in refused.stderr

    other = write_job(tmp_path, deep_update(JOB, {"metadata": {"name": "other-job"}}), name="other.yaml")
    refused = llm_train("run", other, "--output-dir", out)
    (event,) = json_lines(refused.stdout)
    assert refused.code == 1 and event["event"] == "error"
    assert event["message"].startswith(f"{out} holds a run of job 'tiny-cli' ({finished['job']}), not 'other-job'")
    assert (out / "checkpoints" / "latest").read_text() == "global_step6"  # untouched


def test_changes_that_keep_the_checkpoint_valid_are_allowed(finished, tmp_path):
    for i, change in enumerate([{"training": {"steps": 12}}, {"training": {"logIntervalSteps": 4, "compile": True}},
                                {"checkpoint": {"intervalSteps": 2, "keep": 1}}, {"monitoring": {"port": 9999}},
                                {"training": {"schedule": "linear", "warmupSteps": 2}},
                                {"training": {"evalIntervalSteps": 3, "evalSteps": 2}}]):
        spec = load_job_file(str(write_job(tmp_path, deep_update(JOB, {"spec": change}), name=f"{i}.yaml"))).spec
        assert rundir.check_continuable(finished["out"], "tiny-cli", rundir.resume_key(spec, 2)) is None, change
    spec = load_job_file(str(finished["job"])).spec  # --ranks 1: the trainer resumes on another data-parallel size
    assert rundir.check_continuable(finished["out"], "tiny-cli", rundir.resume_key(spec, 1)) is None


def test_a_pipelined_run_keeps_its_rank_count_and_stages(tmp_path):
    """load_resized refuses another data-parallel size with pipeline stages, so the run directory refuses it first."""
    spec = load_job_file(str(write_job(tmp_path, deep_update(JOB, {"spec": {"training": {"pipelineStages": 2}}})))).spec
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("global_step3")
    rundir.write_record(out, "tiny-cli", tmp_path / "job.yaml", rundir.resume_key(spec, 2))
    assert rundir.check_continuable(out, "tiny-cli", rundir.resume_key(spec, 2)) is None
    with pytest.raises(rundir.Refused, match=r"\n  ranks \(nodes × slotsPerNode, or --ranks\): 2 → 4\n"):
        rundir.check_continuable(out, "tiny-cli", rundir.resume_key(spec, 4))
    unpipelined = load_job_file(str(write_job(tmp_path, JOB, name="plain.yaml"))).spec
    with pytest.raises(rundir.Refused, match=r"\n  training.pipelineStages: 2 → \(unset\)\n"):
        rundir.check_continuable(out, "tiny-cli", rundir.resume_key(unpipelined, 2))


def test_run_with_fewer_ranks_resumes_a_two_rank_run(finished, tmp_path):
    """The issue's bug: `llm-train run --ranks 1` on a 2-rank run's directory was refused ("changed: ranks 2 → 1")."""
    out = tmp_path / "out"
    shutil.copytree(finished["out"], out)
    job = write_job(tmp_path, deep_update(JOB, {"spec": {"training": {"steps": 7}}}), name="longer.yaml")
    run = llm_train("run", job, "--output-dir", out, "--ranks", "1")
    assert run.code == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == "global_step6" and summary["world_size"] == 1 and summary["steps"] == 7, summary
    assert summary["resized"], summary  # through the universal checkpoint


def test_fresh_discards_the_earlier_run_and_trains_from_step_0(finished, restarted):
    out, events = restarted["out"], json_lines(restarted["run"].stdout)
    assert events[0]["event"] == "run" and {"checkpoints", "markers", "model", "summary.json"} <= set(events[0]["removed"])
    assert "resume" not in [e.get("event") for e in events]
    assert [e["step"] for e in events if "loss" in e] == [1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] is None and summary["initial_loss"] == finished["summary"]["initial_loss"]
    assert sorted(p.name for p in (out / "checkpoints").glob("global_step*")) == ["global_step3"]
    assert (out / "train.log").read_text().count("==== ") == 1  # the earlier run's log went with it


def test_piped_view_is_json_lines_only(restarted):
    run, out = restarted["run"], restarted["out"]
    assert run.stderr == ""
    events = json_lines(run.stdout)  # every line parses
    assert all(isinstance(e, dict) for e in events)
    assert events[0] == {"event": "run", "job": "tiny-cli", "ranks": 2, "device": "cpu", "output_dir": str(out),
                         "log": str(out / "train.log"), "removed": events[0]["removed"]}
    assert events[1]["event"] == "start" and events[1]["world_size"] == 2
    assert events[-1] == {"event": "preempted", "step": 3, "tag": "global_step3", "reason": "stop-at-step"}
    assert "step" not in [e.get("event") for e in events]  # per-step lines only feed the terminal's bar


def test_resumed_run_reports_the_loss_of_the_whole_run(restarted, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(restarted["out"], out)
    first = next(e["loss"] for e in json_lines(restarted["run"].stdout) if e.get("step") == 1)
    resumed = llm_train("run", restarted["job"], "--output-dir", out, "--log-format", "text")
    assert resumed.code == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming at step 3 from checkpoint global_step3" in resumed.lines
    summary = json.loads((out / "summary.json").read_text())
    assert [r["step"] for r in summary["losses"]] == [4, 5, 6]  # this process trained only the second half
    assert f"tiny-cli complete at step 6 (resumed at step 3): loss {first:.2f} → {summary['final_loss']:.2f}, " \
        in resumed.stdout, resumed.stdout


def test_bad_paths_are_named_not_a_traceback(finished, tmp_path):
    run = llm_train("run", "/nonexistent/job.yaml", "--log-format", "text")
    assert run.code == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("llm-train: /nonexistent/job.yaml: [Errno 2] No such file or directory")
    (tmp_path / "file").write_text("")
    run = llm_train("run", finished["job"], "--output-dir", tmp_path / "file", "--log-format", "text")
    assert run.code == 1 and run.stderr.startswith(f"llm-train: --output-dir {tmp_path / 'file'}: "), run.stderr


def test_run_dir_names_match_the_worker(monkeypatch):
    """rundir repeats these names so as not to import torch; they must be the worker's."""
    monkeypatch.delenv(markers.MARKER_DIR_ENV, raising=False)
    assert rundir.SUMMARY == worker.SUMMARY and rundir.LATEST == checkpoint.LATEST
    assert markers.marker_dir("out") == Path("out") / rundir.MARKERS
