"""The checkpoint commit protocol, pruning and resume resolution, with a stand-in for the DeepSpeed engine."""

from __future__ import annotations

import os
import signal

import pytest

from llm_trainer.checkpoint import COMPLETE, LATEST, CheckpointManager, Preemption, atomic_write, step_of, tag_for


class FakeEngine:
    """Writes DeepSpeed-like files; can die half-way through a save."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at
        self.saved: list[tuple[str, dict, bool]] = []

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        with open(os.path.join(save_dir, tag, "mp_rank_00_model_states.pt"), "w") as f:
            f.write("half")
            if step_of(tag) == self.fail_at:
                raise OSError("disk full")
        self.saved.append((tag, client_state, save_latest))

    def load_checkpoint(self, load_dir, tag):
        return os.path.join(load_dir, tag), {"llmtrain": {"step": step_of(tag)}}


def manager(tmp_path, keep=2):
    return CheckpointManager(tmp_path / "ckpt", keep=keep, rank=0, barrier=lambda: None)


def test_commit_happens_after_the_engine_wrote_everything(tmp_path):
    m, engine = manager(tmp_path), FakeEngine()
    assert m.resolve("latest") is None  # nothing yet: fresh start
    tag = m.save(engine, 10, {"step": 10})
    assert tag == "global_step10"
    assert engine.saved == [("global_step10", {"llmtrain": {"step": 10}}, False)]  # DeepSpeed never writes latest
    assert (m.dir / LATEST).read_text() == "global_step10"
    assert (m.dir / tag / COMPLETE).exists()
    assert m.resolve("latest") == "global_step10"
    assert m.load(engine, "global_step10") == {"step": 10}


def test_a_save_that_dies_half_way_never_becomes_latest(tmp_path):
    m = manager(tmp_path)
    m.save(FakeEngine(), 10, {})
    with pytest.raises(OSError):
        m.save(FakeEngine(fail_at=20), 20, {})
    assert m.latest() == "global_step10"
    assert (m.dir / "global_step20").is_dir() and not m.is_complete("global_step20")
    assert m.complete_tags() == ["global_step10"]
    m.remove_incomplete()  # at the next start
    assert not (m.dir / "global_step20").exists() and m.latest() == "global_step10"


def test_keeps_the_newest_complete_checkpoints(tmp_path):
    m, engine = manager(tmp_path, keep=2), FakeEngine()
    for step in (5, 10, 15, 100):
        m.save(engine, step, {})
    assert m.complete_tags() == ["global_step15", "global_step100"]  # numeric order, not lexical
    assert sorted(p.name for p in m.dir.iterdir() if p.is_dir()) == ["global_step100", "global_step15"]


def test_the_best_checkpoint_is_kept_beside_the_newest(tmp_path):
    """protect: the best evaluation's tag survives however old; it does not count against keep."""
    m, engine = manager(tmp_path, keep=1), FakeEngine()
    m.save(engine, 5, {})
    m.save(engine, 10, {})
    for step in (15, 20):
        m.save(engine, step, {}, protect=("global_step10",))
    assert m.complete_tags() == ["global_step10", "global_step20"]
    m.save(engine, 25, {})  # the best moved on (to step 25 itself): step 10 is an old checkpoint now
    assert m.complete_tags() == ["global_step25"]


def test_resume_resolution(tmp_path):
    m = manager(tmp_path)
    m.save(FakeEngine(), 7, {})
    assert m.resolve("none") is None
    assert m.resolve("global_step7") == "global_step7"
    with pytest.raises(FileNotFoundError, match="no checkpoint 'global_step8'"):
        m.resolve("global_step8")


def test_atomic_write_replaces_whole_files(tmp_path):
    atomic_write(tmp_path / "d" / "latest", "a")
    atomic_write(tmp_path / "d" / "latest", "global_step2")
    assert (tmp_path / "d" / "latest").read_text() == "global_step2"
    assert os.listdir(tmp_path / "d") == ["latest"]  # no temporary left behind
    assert tag_for(3) == "global_step3" and step_of("global_step3") == 3 and step_of("other") is None


def test_sigterm_only_sets_a_flag(tmp_path):
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        p = Preemption()
        assert not p.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert p.requested == "SIGTERM" and p.should_stop()  # world size 1: no agreement round needed
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def test_every_node_prunes_its_own_checkpoint_directory(tmp_path):
    """Node 1's local rank 0 (global rank 8) commits and prunes its own, unshared directory;
    before, only global rank 0 did, and other nodes' old shards filled their disks."""
    node1_main = CheckpointManager(tmp_path / "node1", keep=2, rank=8, local_rank=0, barrier=lambda: None)
    node1_other = CheckpointManager(tmp_path / "node1", keep=2, rank=9, local_rank=1, barrier=lambda: None)
    engine = FakeEngine()
    for step in (5, 10, 15):
        node1_main.save(engine, step, {})
        node1_other.save(engine, step, {})
    assert node1_main.latest() == "global_step15"
    assert sorted(p.name for p in node1_main.dir.iterdir() if p.is_dir()) == ["global_step10", "global_step15"]
