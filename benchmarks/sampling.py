#!/usr/bin/env python3
"""Where a Python process spends its CPU, without py-spy: run a module under a sampling thread.

  python benchmarks/sampling.py OUT.json -m llm_operator.cli run ...

Every 10 ms the sampler reads every thread's stack (sys._current_frames) and counts, for each function on a
stack that is not waiting (its innermost frame is not in a wait, select, sleep, lock, socket call: WAITING, WAITING_AT), one sample
inclusive, and one exclusive for the innermost. Written to OUT.json at exit (SIGTERM included): the top
functions by inclusive and by exclusive samples, and the samples per thread name. A sample is wall time
a thread held or wanted the GIL, which on a CPU-starved process is what delays the rest.
"""

from __future__ import annotations

import atexit
import collections
import json
import runpy
import signal
import sys
import threading

# The innermost Python frame of a thread blocked in C, by name,
WAITING = frozenset({"wait", "select", "poll", "sleep", "_wait_for_tstate_lock", "acquire", "readinto", "recv_into", "recv", "accept"})
# and by module and name where the name alone would hide work: a lock taken with `with` (Condition.__enter__),
# an idle executor thread (_worker in its queue's get), a TLS socket's read and send (a request waiting for the
# API server; their share of TLS work is lost), a connect, urllib3's poll.
WAITING_AT = ("/threading.py:__enter__", "/concurrent/futures/thread.py:_worker", "/ssl.py:read", "/ssl.py:send", "/ssl.py:sendall",
              "/ssl.py:do_handshake", "/socket.py:create_connection", "/socket.py:getaddrinfo", "urllib3/util/wait.py:do_poll")
INTERVAL = 0.01


def where(frame) -> str:
    code = frame.f_code
    return f"{code.co_filename.rsplit('site-packages/', 1)[-1]}:{code.co_name}"


def is_waiting(frame) -> bool:
    return frame.f_code.co_name in WAITING or where(frame).endswith(WAITING_AT)


class Sampler(threading.Thread):
    def __init__(self, out: str):
        super().__init__(daemon=True, name="sampler")
        self.out = out
        self.inclusive: collections.Counter = collections.Counter()
        self.exclusive: collections.Counter = collections.Counter()
        self.threads: collections.Counter = collections.Counter()
        self.samples = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        me = threading.get_ident()
        while not self.stopped.wait(INTERVAL):
            names = {t.ident: t.name for t in threading.enumerate()}
            self.samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me or is_waiting(frame):
                    continue
                self.threads[names.get(ident, "?").split("-")[0]] += 1
                self.exclusive[where(frame)] += 1
                seen = set()
                while frame is not None:
                    key = where(frame)
                    if key not in seen:
                        seen.add(key)
                        self.inclusive[key] += 1
                    frame = frame.f_back

    def write(self) -> None:
        with open(self.out, "w") as f:
            json.dump({"interval_s": INTERVAL, "samples": self.samples, "threads": dict(self.threads.most_common()),
                       "inclusive": self.inclusive.most_common(80), "exclusive": self.exclusive.most_common(60)}, f, indent=1)


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    assert argv[0] == "-m", "usage: sampling.py OUT.json -m module args..."
    sampler = Sampler(out)
    sampler.start()
    atexit.register(sampler.write)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
