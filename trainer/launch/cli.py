"""``llm-train launch``: the command of every worker pod.

    llm-train launch [--wait-dns NAME]... [--wait-tcp HOST:PORT]... [--timeout S]
                     [--marker-dir DIR] [--sshd [--sshd-only]] [options] -- COMMAND...

0. When COMMAND runs ``llm_trainer.worker --job JOB``: check the job's input files (trainer/preflight.py) and
   exit 5 naming the field and the file if one is bad, before anything else starts.
1. ``--sshd``: start a non-root sshd from the job's SSH Secret and write the ssh client config.
2. Wait (``--timeout``) until every ``--wait-dns`` name resolves and every ``--wait-tcp`` endpoint
   accepts a TCP connection; exit 3 naming the peers that never did.
3. Run COMMAND (DeepSpeed's runner) in its own process group with ``LLMTRAIN_MARKER_DIR`` set,
   forward SIGTERM/SIGINT, and exit with a status that tells the truth: the command's failure, or 1
   when it exited 0 without ``<marker-dir>/complete.json`` (training did not reach its last step).

``--sshd-only`` (ssh mode, workers 1..N-1): run sshd until SIGTERM, then exit 0.

Exit codes: 0 done; 1 exited 0 but incomplete; 2 usage; 3 peers never ready; 4 ssh setup failed; 5 bad input files;
126/127 command not executable/not found; otherwise the command's own status (128+N when it was
killed by signal N; 128+N too when it exited 0 without the marker after we forwarded signal N).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Optional

from .. import markers, ssh
from ..markers import COMPLETE as COMPLETE_MARKER
from ..markers import MARKER_DIR_ENV as MARKER_ENV
from ..markers import PREEMPTED as PREEMPTED_MARKER
from ..shm import release_allreduce_buffers
from .common import EXIT_INPUT, EXIT_PEERS, EXIT_SSH, EXIT_USAGE, LaunchError, log
from .env import command_env
from .errortail import StderrTail, failing_rank_error, node_rank
from .outcome import decide_outcome, signal_name
from .peers import Peer, describe_missing, wait_for_peers
from .progress import close_progress, start_progress
from .rankwatch import RankWatch
from .sshmode import check_ssh, serve_sshd_only, start_sshd
from .supervisor import Supervisor, become_subreaper
from .termination import termination_message, write_termination_log

WORKER_MODULE = "llm_trainer.worker"

def hostport(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6addr]:port``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llm-train launch",
        description="Wait for the job's peers, run the DeepSpeed launcher, exit with a truthful status.",
        usage="llm-train launch [options] -- COMMAND [ARGS...]",
    )
    p.add_argument("--wait-dns", action="append", default=[], metavar="NAME", help="wait until NAME resolves (repeatable)")
    p.add_argument("--wait-tcp", action="append", default=[], type=hostport, metavar="HOST:PORT",
                   help="wait until HOST:PORT accepts a TCP connection (repeatable)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="how long to wait for peers (default 600)")
    p.add_argument("--marker-dir", metavar="DIR",
                   help=f"directory where local rank 0 writes {COMPLETE_MARKER} after the last step; exported as {MARKER_ENV}")
    p.add_argument("--termination-log", default="/dev/termination-log", metavar="PATH",
                   help="where to write the outcome if that file exists (Kubernetes terminationMessagePath); '' disables")
    p.add_argument("--linger-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="after the command exits, how long its leftover processes may run before they are killed")
    p.add_argument("--check-command", action="append", default=[], metavar="NAME",
                   help="exit 5 at once, naming it, when NAME is not an executable on PATH (a program job's command)")
    p.add_argument("--progress-port", type=int, metavar="PORT",
                   help="a user's program: serve its reported progress as llmtrain_* series on PORT (0: receiver only)")
    p.add_argument("--progress-token", default="/tmp/llmtrain/progress-token", metavar="PATH", help="bearer token file of the receiver")
    ssh_group = p.add_argument_group("ssh launcher mode")
    ssh_group.add_argument("--sshd", action="store_true", help="start a non-root sshd and write the ssh client config")
    ssh_group.add_argument("--sshd-only", action="store_true", help="only run sshd (workers 1..N-1), until SIGTERM")
    ssh_group.add_argument("--ssh-port", type=int, default=ssh.DEFAULT_PORT, help="sshd port (default 2222)")
    ssh_group.add_argument("--ssh-listen", action="append", metavar="ADDR", help="sshd ListenAddress (default 0.0.0.0)")
    ssh_group.add_argument("--ssh-secret-dir", default=ssh.DEFAULT_SECRET_DIR, metavar="DIR", help="mounted SSH Secret")
    ssh_group.add_argument("--run-dir", default="/tmp/llmtrain", metavar="DIR", help="writable directory for sshd state and the merged DeepSpeed env file")
    ssh_group.add_argument("--check-ssh", action=argparse.BooleanOptionalAction, default=True,
                           help="with --sshd and a command: after the TCP wait, run `ssh HOST true` against every --wait-tcp peer")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options before ``--``, the command after it."""
    if "--" in argv:
        cut = argv.index("--")
        options, command = argv[:cut], argv[cut + 1:]
    else:
        options, command = argv, []
    parser = build_parser()
    args = parser.parse_args(options)
    args.command = command
    if args.sshd_only:
        args.sshd = True
        if command:
            parser.error("--sshd-only takes no command")
    elif not command:
        parser.error("missing command after '--' (or use --sshd --sshd-only)")
    if args.timeout < 0 or args.linger_timeout < 0:
        parser.error("timeouts must be >= 0")
    return args


def clear_markers(marker_dir: str) -> pathlib.Path:
    d = pathlib.Path(marker_dir)
    d.mkdir(parents=True, exist_ok=True)
    for name in markers.clear(d, errors=True):
        log("info", "removing stale marker", path=str(d / name))
    return d


def master_of(command: list[str]) -> tuple[Optional[str], Optional[str]]:
    """--master_addr and --master_port of a DeepSpeed runner command line."""
    values = dict(arg.split("=", 1) for arg in command if arg.startswith(("--master_addr=", "--master_port=")))
    return values.get("--master_addr"), values.get("--master_port")


def run_command(args: argparse.Namespace, sup: Supervisor) -> tuple[int, str]:
    marker_dir = clear_markers(args.marker_dir) if args.marker_dir else None
    env = {**command_env(args), **getattr(args, "progress_env", {})}
    log("info", "starting command", argv=args.command, marker_dir=args.marker_dir)
    tail, watch = None, None
    try:
        if args.check_command:  # a user's program: its errors are read from its stderr (errortail)
            sup.command = sup.spawn(args.command, env=env, stderr=subprocess.PIPE)
            assert sup.command.stderr is not None
            tail = StderrTail(sup.command.stderr)
            watch = RankWatch.of_tree(sup.command.pid).start()  # which rank exits first: the runner's output may not say
        else:
            sup.command = sup.spawn(args.command, env=env)
    except OSError as e:
        raise LaunchError(127 if isinstance(e, FileNotFoundError) else 126, f"cannot start {args.command[0]}: {e}") from None
    started = time.monotonic()
    returncode = sup.wait(sup.command)
    assert returncode is not None  # wait() returns once the command exited
    if watch is not None:
        watch.stop()
    log("info", "command exited", returncode=returncode, runtime_s=round(time.monotonic() - started, 1))
    sup.drain(timeout=None if sup.received else args.linger_timeout)
    release_allreduce_buffers(*master_of(args.command))  # ranks killed by a signal leave theirs behind
    if marker_dir is None:
        if tail is not None:
            tail.join()
        first = watch.first_failure() if watch is not None else None
        rank_error = failing_rank_error(list(tail.lines), node_rank(), first) if tail is not None and returncode != 0 else None
        return decide_outcome(returncode, None, sup.received, rank_error=rank_error)
    return decide_outcome(returncode, (marker_dir / COMPLETE_MARKER).exists(), sup.received,
                          markers.read(marker_dir, PREEMPTED_MARKER), markers.first_error(marker_dir))


def job_manifest(command: list[str]) -> Optional[str]:
    """The --job of a command that runs the trainer's worker (the DeepSpeed runner line the operator renders)."""
    if WORKER_MODULE not in command:
        return None
    for i, arg in enumerate(command):
        if arg == "--job" and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith("--job="):
            return arg.split("=", 1)[1]
    return None


def preflight(command: list[str]) -> None:
    """The trainer's input checks, before DeepSpeed starts: a bad file fails the pod in seconds (exit 5)."""
    job_path = job_manifest(command)
    if job_path is None:
        return
    from llm_operator.api import SpecError, load_job_file

    from ..preflight import PreflightError, check

    started = time.monotonic()
    try:
        check(load_job_file(job_path).spec)
    except (SpecError, PreflightError) as exc:
        raise LaunchError(EXIT_INPUT, str(exc)) from None
    except OSError as exc:
        raise LaunchError(EXIT_INPUT, f"--job {job_path}: {exc}") from None
    log("info", "job input checked", job=job_path, took_s=round(time.monotonic() - started, 2))


def check_commands(names: list[str]) -> None:
    """A program's command missing from the image cannot start on any retry: fail as bad input (no restarts)."""
    for name in names:
        if shutil.which(name) is None:
            where = "not an executable file" if "/" in name else f"not found on PATH={os.environ.get('PATH', '')}"
            raise LaunchError(EXIT_INPUT, f"program.command: {name!r} is not in the image ({where})")


def launch(args: argparse.Namespace, sup: Supervisor) -> tuple[int, str]:
    if not args.sshd_only:
        check_commands(args.check_command)
        preflight(args.command)
    if args.sshd:
        start_sshd(args, sup)
        if args.sshd_only:
            return serve_sshd_only(sup)
    peers = [Peer(h) for h in args.wait_dns] + [Peer(h, p) for h, p in args.wait_tcp]
    missing = wait_for_peers(peers, args.timeout, stop=lambda: sup.received is not None)
    if sup.received:
        return 128 + sup.received, f"{signal_name(sup.received)} received before the command started"
    if missing:
        raise LaunchError(EXIT_PEERS, describe_missing(missing, args.timeout))
    args.progress_service = start_progress(args)
    args.progress_env = args.progress_service.program_env() if args.progress_service is not None else {}
    if args.sshd and args.check_ssh and args.wait_tcp:
        failures = check_ssh(args.wait_tcp)
        if failures:
            raise LaunchError(EXIT_SSH, "ssh to peers failed: " + "; ".join(failures) + ". Usually the pods mount "
                              "different SSH Secrets, or the image lacks a passwd entry/login shell for this uid")
    return run_command(args, sup)


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    become_subreaper()
    sup = Supervisor()
    sup.install_signal_handlers()
    try:
        code, message = launch(args, sup)
    except LaunchError as e:
        code, message = e.code, str(e)
    finally:
        close_progress(getattr(args, "progress_service", None), stop=lambda: sup.received is not None)
        sup.stop_sshd()
    log("info" if code == 0 else "error", message, exit_code=code)
    write_termination_log(args.termination_log, termination_message(code, message, args.marker_dir))
    return code
