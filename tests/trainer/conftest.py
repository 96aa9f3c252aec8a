"""Fixtures shared by the trainer tests."""

from __future__ import annotations

import pytest

from trainer_testlib import Run, run_ranks, write_job


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Run:
    """The BASE_JOB (2 ranks, ZeRO-1, gradient accumulation 2) trained uninterrupted: the yardstick."""
    d = tmp_path_factory.mktemp("reference")
    run = run_ranks(write_job(d), d / "out")
    assert run.codes == [0, 0], run.log_tail()
    return run
