"""The pod's progress service for a user's program (trainer/progress_receiver.py): started before the program,
its env given to every rank, closed after a last scrape. Progress is optional: a service that cannot start is
logged and the program runs without it (its status then says no progress is reported)."""

from __future__ import annotations

import argparse
import os
import pathlib
from typing import Any, Callable, Optional

from llm_operator.api.contract import FINAL_SCRAPE_ENV

from .common import log


def start_progress(args: argparse.Namespace) -> Optional[Any]:
    if args.progress_port is None:
        return None
    from ..progress_receiver import start_progress_service  # stdlib only, injected with the launcher

    token = pathlib.Path(args.progress_token)
    try:
        token.parent.mkdir(parents=True, exist_ok=True)
        service = start_progress_service(args.progress_port, token)
    except OSError as exc:
        log("warning", "progress receiver not started: the program runs without progress reporting", error=str(exc))
        return None
    log("info", "progress receiver started", receiver=service.receiver_url, metrics=service.metrics_url)
    return service


def close_progress(service: Optional[Any], stop: Callable[[], bool]) -> None:
    if service is not None:
        service.close(linger_seconds=float(os.environ.get(FINAL_SCRAPE_ENV) or 0), stop=stop)
