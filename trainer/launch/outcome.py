"""The truth about a finished command: its exit status and what it means, from returncode, markers and signals."""

from __future__ import annotations

import signal
from typing import Optional

from .common import EXIT_INCOMPLETE, EXIT_OK

INCOMPLETE_MESSAGE = (
    "deepspeed exited 0 but training did not reach its last step "
    "(a rank was probably killed by a signal, e.g. the OOM killer)"
)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def decide_outcome(
    returncode: int, marker_present: Optional[bool], received: Optional[int], preempted: Optional[dict] = None,
    rank_error: Optional[dict] = None,
) -> tuple[int, str]:
    """(exit code, message) from the command's returncode (negative: killed by that signal), whether
    the completion marker exists (None: no --marker-dir), the signal we forwarded, if any, the
    content of preempted.json (the ranks saved a checkpoint after a stop request), and the first
    rank's error marker (its exception's last line, which the operator classifies, e.g. NCCLError)."""
    code, message = _outcome(returncode, marker_present, received, preempted)
    if code != EXIT_OK and rank_error:
        message += f"; rank {rank_error.get('rank', '?')}: {rank_error['error']}"
    return code, message


def _outcome(returncode: int, marker_present: Optional[bool], received: Optional[int], preempted: Optional[dict]) -> tuple[int, str]:
    stopped = f" after this pod received {signal_name(received)}" if received else ""
    if returncode < 0:
        sig = -returncode
        hint = "" if received else (
            "; nobody in this pod sent it: the OOM killer or a kill from outside (see `kubectl describe pod`, node dmesg)"
            if sig == signal.SIGKILL else ""
        )
        return 128 + sig, f"command was killed by {signal_name(sig)}{stopped}{hint}"
    if returncode > 0:
        msg = f"command exited with status {returncode}{stopped}"
        if 128 < returncode < 256 and 256 - returncode in (signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS):
            # deepspeed.launcher.launch exits with sys.exit(rank.returncode), i.e. 256-N for signal N.
            sig = 256 - returncode
            msg += f" (DeepSpeed's way of saying a rank was killed by {signal_name(sig)}"
            msg += ": the OOM killer or a kill from outside)" if sig == signal.SIGKILL and not received else ")"
        return returncode, msg
    if marker_present is False:
        if preempted is not None:
            how = f"stopped by {signal_name(received)}" if received else "stopped on request"
            saved = f"checkpoint {preempted.get('tag', '?')} saved at step {preempted.get('step', '?')}"
            return (128 + received if received else EXIT_INCOMPLETE), f"{how} before the last step; {saved}"
        if received:
            return 128 + received, f"stopped by {signal_name(received)} before training reached its last step"
        return EXIT_INCOMPLETE, INCOMPLETE_MESSAGE
    return EXIT_OK, "training complete" if marker_present else "command exited 0"
