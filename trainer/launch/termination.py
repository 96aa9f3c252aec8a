"""The pod's termination message: what happened for people, then the run's final state for the operator.

The kubelet reads terminationMessagePath (/dev/termination-log) into the container's terminated state, and the
operator copies it into status.failure.message (operator/failures.py) and reads the final state line from it
(operator/api/contract.py parse_final_state).
"""

from __future__ import annotations

import os
import pathlib
from typing import Optional

from llm_operator.api.contract import final_state_line

from .. import markers
from .common import log

TERMINATION_MESSAGE_MAX = 4096


def write_termination_log(path: str, message: str) -> None:
    """Best effort; only into an existing file (the kubelet creates terminationMessagePath)."""
    if not path or not os.path.exists(path):
        return
    data = message.encode()[: TERMINATION_MESSAGE_MAX - 1] + b"\n"
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        log("warning", "cannot write termination log", path=path, error=str(e))


def termination_message(code: int, message: str, marker_dir: Optional[str]) -> str:
    """What happened, for people, then the run's final state (final.json) for the operator."""
    final = markers.read(pathlib.Path(marker_dir), markers.FINAL) if marker_dir else None
    human = f"{message[:3000]} (exit {code})"  # the final state must survive the kubelet's 4 KiB cut
    return human + (f"\n{final_state_line(final)}" if final else "")
