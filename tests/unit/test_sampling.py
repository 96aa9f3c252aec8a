"""benchmarks/sampling.py (the operator's --profile): a thread blocked on a lock taken with `with`, or an idle
executor thread, is waiting, not busy (issue 22: both were most of a 100m profile's samples)."""

from __future__ import annotations

import importlib.util
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SAMPLING = Path(__file__).resolve().parents[2] / "benchmarks" / "sampling.py"


def load_sampling():
    spec = importlib.util.spec_from_file_location("sampling", SAMPLING)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spin_for_the_sampler(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def test_threads_blocked_on_a_lock_or_idle_in_an_executor_are_not_samples():
    sampling = load_sampling()
    held, stop = threading.Condition(), threading.Event()
    held.acquire()

    def blocked_on_the_lock() -> None:
        with held:
            pass

    blocked = threading.Thread(target=blocked_on_the_lock, daemon=True)
    blocked.start()
    with ThreadPoolExecutor(2) as idle_executor:
        idle_executor.submit(lambda: None).result()  # its thread now waits in its queue
        busy = threading.Thread(target=spin_for_the_sampler, args=(stop,), daemon=True)
        busy.start()
        sampler = sampling.Sampler("/dev/null")
        sampler.start()
        time.sleep(0.5)
        sampler.stopped.set()
        sampler.join()
        stop.set()
        busy.join()
    held.release()
    blocked.join()
    exclusive = {where.rsplit(":", 1)[1] for where in sampler.exclusive}
    assert sampler.inclusive[f"{__file__}:spin_for_the_sampler"] > 5
    assert not exclusive & {"__enter__", "_worker"}
