"""Progress of a user's program, turned into our llmtrain_* series, without changing the program.

Runs inside the user's image next to the program (the in-pod launcher starts it), so it is stdlib only
(Python >= 3.10) and imports nothing of ours: the launcher may copy this one file anywhere and import it.

Two HTTP servers in one service:
- a receiver on loopback for transformers' `KubeflowCallback` (transformers >= 5: `Trainer` registers it whenever
  KUBEFLOW_TRAINER_SERVER_URL is set, and on rank 0 POSTs `{"trainerStatus": {progressPercentage,
  estimatedRemainingSeconds, metrics: [{name, value}]}}` with `Authorization: Bearer <contents of the file
  KUBEFLOW_TRAINER_SERVER_TOKEN names>` at train begin, at most every 5 s on step end, and at train end), and for
  llmtraining_report (report_helper/, for programs that are not HF Trainer), which posts the same payload;
- /metrics on monitoring.port in the Prometheus text format: the llmtrain_* gauges below, each absent until a
  report carried it, as our own trainer's are (metrics.py), so the operator's status.progress, stall detection,
  Prometheus and the dashboard read a program's pod as they read ours. A program that reports nothing serves no
  llmtrain_step: the operator then never sees a step.

The launcher's API:

    service = start_progress_service(monitoring_port, token_path)   # monitoring_port 0: no /metrics (receiver only)
    env = {**os.environ, **service.program_env()}   # KUBEFLOW_TRAINER_SERVER_URL, ..._TOKEN, PYTHONPATH (report helper)
    ... run the program's ranks with env ...
    service.close(linger_seconds=final_scrape_seconds, stop=lambda: sigterm_seen)   # last scrape, then stop

start_progress_service writes a fresh random bearer token to token_path (mode 0600; its directory must exist)
and raises OSError if a port cannot be bound. service.metrics_url and service.receiver_url say where it serves.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

SERVER_URL_ENV = "KUBEFLOW_TRAINER_SERVER_URL"  # transformers' KubeflowCallback reads these two
SERVER_TOKEN_ENV = "KUBEFLOW_TRAINER_SERVER_TOKEN"
RECEIVER_PATH = "/v1/progress"
REPORT_HELPER_DIR = Path(__file__).resolve().parent / "report_helper"  # llmtraining_report.py, put on PYTHONPATH
MAX_BODY_BYTES = 1 << 20

# The llmtrain_* gauges a program's reports fill: (name, help). Same names and help as metrics.METRICS (a test
# compares them); copied, not imported, because this file runs where our package is not installed.
SERIES: tuple[tuple[str, str], ...] = (
    ("llmtrain_step", "Last completed optimizer step."),
    ("llmtrain_total_steps", "Optimizer steps the job trains (spec.training.steps)."),
    ("llmtrain_loss", "Training loss, mean over the ranks and the steps of the last logging interval."),
    ("llmtrain_learning_rate", "Learning rate of the last logged step."),
    ("llmtrain_grad_norm", "Global gradient norm of the last logged step (before clipping)."),
    ("llmtrain_eval_loss", "Loss on the held-out data at the last evaluation, mean over its tokens and the ranks; absent before the first."),
    ("llmtrain_eval_perplexity", "exp(llmtrain_eval_loss): held-out perplexity at the last evaluation; absent before the first."),
    ("llmtrain_estimated_remaining_seconds", "Seconds until training ends, as a user's program estimates it (HF Trainer); absent for the built-in trainer."),
    ("llmtrain_last_step_timestamp_seconds", "Unix time the last optimizer step ended on this node (a hang shows as its age)."),
    ("llmtrain_finished", "1 once training ended on this node: complete, or stopped with a checkpoint saved; absent before."),
)

# a reported metric's name -> our gauge (HF's log keys; llmtraining_report sends the same names)
METRIC_GAUGES = {
    "current_step": "llmtrain_step",
    "total_steps": "llmtrain_total_steps",
    "loss": "llmtrain_loss",
    "learning_rate": "llmtrain_learning_rate",
    "grad_norm": "llmtrain_grad_norm",
    "eval_loss": "llmtrain_eval_loss",
}


class ReportError(ValueError):
    """A report that is not the KubeflowCallback payload; the message says what is wrong."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ReportError(f"{what} must be a number, got {value!r}")
    try:
        return float(value)  # HF sends metric values as strings: str(v)
    except (TypeError, ValueError):
        raise ReportError(f"{what} must be a number, got {value!r}") from None


def parse_report(payload: Any) -> dict[str, float]:
    """A KubeflowCallback payload -> the llmtrain_* values it carries. Pure; raises ReportError naming the field."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("trainerStatus"), Mapping):
        raise ReportError('the body must be a JSON object {"trainerStatus": {...}}')
    status = payload["trainerStatus"]
    values: dict[str, float] = {}
    metrics = status.get("metrics") or []
    if not isinstance(metrics, list):
        raise ReportError("trainerStatus.metrics must be a list of {name, value}")
    for i, metric in enumerate(metrics):
        if not isinstance(metric, Mapping) or not isinstance(metric.get("name"), str) or "value" not in metric:
            raise ReportError(f"trainerStatus.metrics[{i}] must be an object with a name and a value")
        gauge = METRIC_GAUGES.get(metric["name"])
        if gauge is None:
            continue  # train_runtime, epoch, ...: HF logs more than we export
        try:
            values[gauge] = _number(metric["value"], f"trainerStatus.metrics[{i}] ({metric['name']})")
        except ReportError:
            continue  # a value HF logged that is not a number: not ours to refuse the whole report over
    if "llmtrain_eval_loss" in values:
        loss = values["llmtrain_eval_loss"]
        values["llmtrain_eval_perplexity"] = math.exp(loss) if loss < 700 else math.inf
    if status.get("estimatedRemainingSeconds") is not None:
        values["llmtrain_estimated_remaining_seconds"] = _number(status["estimatedRemainingSeconds"], "trainerStatus.estimatedRemainingSeconds")
    if status.get("progressPercentage") is not None:
        percent = _number(status["progressPercentage"], "trainerStatus.progressPercentage")
        if percent >= 100:  # HF's train-end report: 100 %, and no current_step
            values["llmtrain_finished"] = 1.0
    return values


@dataclass
class ProgressState:
    """The gauges' values; absent (not 0) until a report carried them."""

    values: dict[str, float] = field(default_factory=dict)
    reports: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def apply(self, report: Mapping[str, float], now: Optional[float] = None) -> None:
        with self.lock:
            self.reports += 1
            previous_step = self.values.get("llmtrain_step")
            # HF's end report carries no step: the step stays the last one reported (up to 5 s old; an early stop
            # also ends at 100 %), and the operator sets status.progress to the total when the job succeeds
            self.values.update(report)
            if self.values.get("llmtrain_step") != previous_step:
                self.values["llmtrain_last_step_timestamp_seconds"] = time.time() if now is None else now

    def exposition(self) -> str:
        with self.lock:
            values = dict(self.values)
        lines = []
        for name, doc in SERIES:
            if name in values:
                lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {_format(values[name])}"]
        return "\n".join(lines) + "\n" if lines else ""


def _format(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _receiver_handler(state: ProgressState, token: str) -> type[BaseHTTPRequestHandler]:
    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if self.path.split("?")[0] != RECEIVER_PATH:
                return self._answer(404, f"no such endpoint {self.path}: progress reports go to POST {RECEIVER_PATH}")
            given = self.headers.get("Authorization", "")
            if not given.startswith("Bearer ") or not hmac.compare_digest(given[len("Bearer "):].strip().encode(), token.encode()):
                return self._answer(401, f"missing or wrong bearer token: send 'Authorization: Bearer <contents of ${SERVER_TOKEN_ENV}>'")
            declared = self.headers.get("Content-Length") or "0"
            length = int(declared) if declared.isdigit() else 0  # not a length: refused below, as an empty body
            if length <= 0 or length > MAX_BODY_BYTES:
                return self._answer(413 if length > 0 else 400, f"the body must be JSON of 1 to {MAX_BODY_BYTES} bytes (Content-Length {length})")
            try:
                state.apply(parse_report(json.loads(self.rfile.read(length))))
            except json.JSONDecodeError as exc:
                return self._answer(400, f"the body is not JSON: {exc}")
            except ReportError as exc:
                return self._answer(400, str(exc))
            self._answer(200, "ok")

        def do_GET(self) -> None:
            self._answer(405, f"progress reports are POSTed to {RECEIVER_PATH}; /metrics is served on monitoring.port")

        do_PUT = do_DELETE = do_PATCH = do_GET

        def _answer(self, code: int, message: str) -> None:
            body = (message + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class' name)
            pass  # a line per report would flood the program's log

    return Receiver


def _metrics_handler(state: ProgressState) -> type[BaseHTTPRequestHandler]:
    class MetricsEndpoint(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            body = state.exposition().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return MetricsEndpoint


class ProgressService:
    """The receiver and the /metrics endpoint, each served by a daemon thread."""

    def __init__(self, monitoring_port: int, token_path: Path, metrics_host: str = "0.0.0.0"):
        self.state = ProgressState()
        self.token_path = Path(token_path)
        token = secrets.token_urlsafe(32)
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        self._servers: list[ThreadingHTTPServer] = []
        receiver = self._serve(("127.0.0.1", 0), _receiver_handler(self.state, token))
        self.receiver_url = f"http://127.0.0.1:{receiver.server_address[1]}{RECEIVER_PATH}"
        self.metrics_url: Optional[str] = None
        if monitoring_port:
            try:
                metrics = self._serve((metrics_host, monitoring_port), _metrics_handler(self.state))
            except OSError:
                self.close()
                raise
            self.metrics_url = f"http://127.0.0.1:{metrics.server_address[1]}/metrics"

    def _serve(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(address, handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.1,), name=f"progress:{address[1]}", daemon=True).start()
        self._servers.append(server)
        return server

    def program_env(self) -> dict[str, str]:
        """The env every rank of the program gets: HF Trainer registers KubeflowCallback on it; llmtraining_report
        reads the same two names. PYTHONPATH: the report helper first, then what the pod had."""
        pythonpath = os.pathsep.join(p for p in (str(REPORT_HELPER_DIR), os.environ.get("PYTHONPATH", "")) if p)
        return {SERVER_URL_ENV: self.receiver_url, SERVER_TOKEN_ENV: str(self.token_path), "PYTHONPATH": pythonpath}

    def close(self, linger_seconds: float = 0, stop: Optional[Callable[[], bool]] = None) -> None:
        """Keep serving the last values up to linger_seconds so a last scrape sees them (unless stop() says go), then stop."""
        deadline = time.monotonic() + linger_seconds
        while time.monotonic() < deadline and not (stop and stop()):
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []


def start_progress_service(monitoring_port: int, token_path: Path | str) -> ProgressService:
    """Start the receiver on loopback and /metrics on monitoring_port (0: none); see the module's docstring."""
    return ProgressService(monitoring_port, Path(token_path))
