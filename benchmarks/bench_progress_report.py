"""The cost of one llmtraining_report.step() call against the progress receiver on loopback (docs/programs.md).

    python benchmarks/bench_progress_report.py --calls 1000
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

from llm_trainer.progress_receiver import REPORT_HELPER_DIR, start_progress_service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    calls = parser.parse_args().calls
    with tempfile.TemporaryDirectory() as tmp:
        service = start_progress_service(0, Path(tmp) / "token")
        os.environ.update({k: v for k, v in service.program_env().items() if k != "PYTHONPATH"})
        spec = importlib.util.spec_from_file_location("llmtraining_report", REPORT_HELPER_DIR / "llmtraining_report.py")
        assert spec is not None and spec.loader is not None
        report = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(report)
        for i in range(50):  # warm up: connections, imports
            report.step(i, total_steps=calls, loss=1.0)
        times = []
        for i in range(calls):
            start = time.perf_counter()
            assert report.step(i, total_steps=calls, loss=1.0, learning_rate=1e-4)
            times.append(time.perf_counter() - start)
        service.close()
    times.sort()
    print(f"llmtraining_report.step over loopback, {calls} calls on {os.cpu_count()} CPUs: "
          f"median {statistics.median(times) * 1e3:.3f} ms, p99 {times[int(0.99 * (calls - 1))] * 1e3:.3f} ms, "
          f"mean {statistics.fmean(times) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
