"""benchmarks/bench_operator.py, tiny: it runs end to end on a control plane of its own, and what it counts from
the API server's audit log holds exactly (no timings are asserted: those are the benchmark's to print)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_counts_the_operators_requests(tmp_path):
    jobs, workers = 2, 2
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_operator.py"), "--jobs", str(jobs), "--workers", str(workers),
         "--nodes", "3", "--settle", "2", "--finish", "--cp-dir", str(tmp_path / "cp"), "--log", str(tmp_path / "operator.log")],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(proc.stdout, file=sys.stderr)

    requests = result["requests_per_job"]
    assert requests["by_verb_resource"]["create pods"] == workers  # exactly one create per worker: no retry, no duplicate
    # + ConfigMap, Service, the gang's Workload and PodGroup (the harness serves the Workload API), status Created and
    # Running, and their 2 Events
    assert requests["writes"] == workers + 8
    assert "get llmtrainingjobs" not in requests["by_verb_resource"]  # the job comes from the watch
    assert result["noop_events"] == jobs * workers and result["requests_for_noop_events"] == 0
    assert result["requests_while_quiet"] == 0
    assert {"operator_over_raw", "operator_over_raw_pods", "operator_over_raw_children", "running_lag_s", "rss_mib", "rss_finished_mib", "cpu_s"} <= set(result)
    assert all(result[key] > 0 for key in ("raw_s", "raw_children_s", "raw_pods_s"))
