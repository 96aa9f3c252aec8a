"""What every part of `llm-train launch` shares: exit codes, its JSON log lines, LaunchError."""

from __future__ import annotations

import datetime
import json
import sys

from llm_operator.api.contract import EXIT_BAD_INPUT

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_PEERS = 3
EXIT_SSH = 4
EXIT_INPUT = EXIT_BAD_INPUT  # the job's input files are bad (preflight): restarting cannot help


class LaunchError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def log(level: str, msg: str, **fields) -> None:
    """One JSON object per line on stderr."""
    record = {
        "ts": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
        "level": level,
        "component": "llm-train-launch",
        "msg": msg,
        **fields,
    }
    try:
        sys.stderr.write(json.dumps(record, default=str) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass

