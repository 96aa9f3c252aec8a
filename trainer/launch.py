"""``llm-train launch``: the command of every worker pod.

    llm-train launch [--wait-dns NAME]... [--wait-tcp HOST:PORT]... [--timeout S]
                     [--marker-dir DIR] [--sshd [--sshd-only]] [options] -- COMMAND...

1. ``--sshd``: start a non-root sshd from the job's SSH Secret and write the ssh client config.
2. Wait (``--timeout``) until every ``--wait-dns`` name resolves and every ``--wait-tcp`` endpoint
   accepts a TCP connection; exit 3 naming the peers that never did.
3. Run COMMAND (DeepSpeed's runner) in its own process group with ``LLMTRAIN_MARKER_DIR`` set,
   forward SIGTERM/SIGINT, and exit with a status that tells the truth: the command's failure, or 1
   when it exited 0 without ``<marker-dir>/complete.json`` (training did not reach its last step).

``--sshd-only`` (ssh mode, workers 1..N-1): run sshd until SIGTERM, then exit 0.

Exit codes: 0 done; 1 exited 0 but incomplete; 2 usage; 3 peers never ready; 4 ssh setup failed;
126/127 command not executable/not found; otherwise the command's own status (128+N when it was
killed by signal N; 128+N too when it exited 0 without the marker after we forwarded signal N).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import json
import os
import pathlib
import pwd
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

from llm_operator.api.contract import final_state_line

from . import markers, ssh
from .shm import release_allreduce_buffers
from .markers import COMPLETE as COMPLETE_MARKER
from .markers import MARKER_DIR_ENV as MARKER_ENV
from .markers import PREEMPTED as PREEMPTED_MARKER

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_PEERS = 3
EXIT_SSH = 4
DS_ENV_FILE = "DS_ENV_FILE"
DS_LAUNCH_MODULE = "deepspeed.launcher.launch"  # DeepSpeed's per-node launcher; its children are the ranks
TERMINATION_MESSAGE_MAX = 4096

INCOMPLETE_MESSAGE = (
    "deepspeed exited 0 but training did not reach its last step "
    "(a rank was probably killed by a signal, e.g. the OOM killer)"
)
DNS_HINT = (
    "usually the pod is not scheduled or has no IP yet (Pending: see `kubectl get pods` and its events), "
    "the headless Service is missing or does not select the pod, the pod's hostname/subdomain do not "
    "match the Service, or the Service lacks publishNotReadyAddresses: true"
)
TCP_HINT = (
    "usually sshd on that pod is not running yet or crashed (see that pod's log), "
    "or a NetworkPolicy blocks the port"
)


class LaunchError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------------ logging
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


# -------------------------------------------------------------------------------- arguments
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


# ------------------------------------------------------------------------------------ peers
@dataclasses.dataclass
class Peer:
    host: str
    port: Optional[int] = None  # None: DNS only
    error: Optional[str] = "not tried yet"
    resolved: bool = False

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def probe(peer: Peer, connect_timeout: float) -> Optional[str]:
    """None when the peer is ready, else why not."""
    try:
        infos = socket.getaddrinfo(peer.host, peer.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"does not resolve: {e.strerror or e}"
    peer.resolved = True
    if peer.port is None:
        return None
    last = "no address"
    for family, type_, proto, _, addr in infos:
        try:
            with socket.socket(family, type_, proto) as s:
                s.settimeout(connect_timeout)
                s.connect(addr)
                return None
        except OSError as e:
            last = f"{addr[0]}: {e.strerror or e.__class__.__name__}"
    return f"no connection: {last}"


def wait_for_peers(
    peers: list[Peer], timeout: float, *, interval: float = 1.0, progress_every: float = 10.0, stop=lambda: False
) -> list[Peer]:
    """Probe until all peers are ready, ``timeout`` passes or ``stop()``; return the peers not ready."""
    if not peers:
        return []
    start = time.monotonic()
    deadline = start + timeout
    next_progress = start + progress_every
    pending = list(peers)
    log("info", "waiting for peers", peers=[str(p) for p in pending], timeout_s=timeout)
    while True:
        for peer in pending:
            peer.error = probe(peer, connect_timeout=max(0.2, min(3.0, deadline - time.monotonic())))
        pending = [p for p in pending if p.error]
        now = time.monotonic()
        if not pending:
            log("info", "all peers ready", peers=len(peers), waited_s=round(now - start, 1))
            return []
        if now >= deadline or stop():
            return pending
        if now >= next_progress:
            next_progress = now + progress_every
            log("info", "still waiting for peers", ready=len(peers) - len(pending), total=len(peers),
                waited_s=round(now - start, 1), pending={str(p): p.error for p in pending})
        time.sleep(max(0.0, min(interval, deadline - now)))


def describe_missing(missing: list[Peer], timeout: float) -> str:
    unresolved = [p for p in missing if not p.resolved]
    silent = [p for p in missing if p.resolved]
    parts = [f"peers not ready after {timeout:g}s."]
    if unresolved:
        parts.append("Never resolved: " + ", ".join(f"{p.host} ({p.error})" for p in unresolved) + f"; {DNS_HINT}.")
    if silent:
        parts.append("Never answered: " + ", ".join(f"{p} ({p.error})" for p in silent) + f"; {TCP_HINT}.")
    return " ".join(parts)


# ---------------------------------------------------------------------------------- outcome
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
            "; nobody here sent it, so it was probably the OOM killer (see `kubectl describe pod`, node dmesg)"
            if sig == signal.SIGKILL else ""
        )
        return 128 + sig, f"command was killed by {signal_name(sig)}{stopped}{hint}"
    if returncode > 0:
        msg = f"command exited with status {returncode}{stopped}"
        if 128 < returncode < 256 and 256 - returncode in (signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS):
            # deepspeed.launcher.launch exits with sys.exit(rank.returncode), i.e. 256-N for signal N.
            sig = 256 - returncode
            msg += f" (DeepSpeed's way of saying a rank was killed by {signal_name(sig)}"
            msg += ": probably the OOM killer)" if sig == signal.SIGKILL and not received else ")"
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


# ----------------------------------------------------------------------------- supervision
def become_subreaper() -> None:
    """Orphaned descendants (e.g. ranks whose DeepSpeed launcher died) are re-parented to us, so we
    can wait for them before exiting (as PID 1 our exit would SIGKILL them mid-checkpoint)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError):
            pass


def returncode_of(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class Supervisor:
    """Children, their exit statuses, and signal forwarding."""

    POLL = 0.1

    def __init__(self) -> None:
        self.command: Optional[subprocess.Popen] = None
        self.sshd: Optional[subprocess.Popen] = None
        self.returncodes: dict[int, int] = {}
        self.received: Optional[int] = None
        self.signals = 0

    # -- processes
    def spawn(self, argv: list[str], env: Optional[dict] = None) -> subprocess.Popen:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = returncode_of(status)
            self.returncodes[pid] = code
            for proc in (self.command, self.sshd):
                if proc is not None and proc.pid == pid:
                    proc.returncode = code

    def exited(self, proc: Optional[subprocess.Popen]) -> bool:
        self.reap()
        return proc is None or proc.pid in self.returncodes

    def wait(self, proc: subprocess.Popen, timeout: Optional[float] = None) -> Optional[int]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.exited(proc):
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(self.POLL)
        return self.returncodes[proc.pid]

    def workload(self) -> list:
        """Live descendants other than sshd itself (its per-connection processes included)."""
        import psutil

        out: list = []
        try:
            descendants = psutil.Process().children(recursive=True)
        except psutil.Error:
            return out
        for p in descendants:
            try:
                if p.status() == psutil.STATUS_ZOMBIE or p.name().startswith("sshd"):
                    continue
                out.append(p)
            except psutil.Error:
                continue
        return out

    def deepspeed_ranks(self) -> list:
        """Processes whose parent is DeepSpeed's per-node launcher (the training ranks)."""
        import psutil

        ranks = []
        for p in self.workload():
            try:
                parent = p.parent()
                if parent is not None and DS_LAUNCH_MODULE in " ".join(parent.cmdline()):
                    ranks.append(p)
            except psutil.Error:
                continue
        return ranks

    # -- signals
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        self.signals += 1
        self.received = self.received or signum
        self.forward(signum, escalate=self.signals > 1)

    def forward(self, signum: int, *, escalate: bool = False) -> None:
        """First signal: to the DeepSpeed ranks only, so each can save a checkpoint and exit on its
        own terms (signalling DeepSpeed's launcher would make it SIGKILL the ranks 30 s later).
        No ranks yet, or a second signal: to the command's process group and everything else."""
        ranks = [] if escalate else self.deepspeed_ranks()
        if ranks:
            for p in ranks:
                self._send(p, signum)
            log("info", f"forwarded {signal_name(signum)} to the DeepSpeed ranks", pids=[p.pid for p in ranks])
            return
        targets = []
        if self.command is not None and not self.exited(self.command):
            try:
                os.killpg(self.command.pid, signum)
                targets.append(f"group {self.command.pid}")
            except ProcessLookupError:
                pass
        group = self.command.pid if self.command is not None else None
        for p in self.workload():
            try:
                if os.getpgid(p.pid) != group:
                    self._send(p, signum)
                    targets.append(p.pid)
            except OSError:
                continue
        log("info", f"forwarded {signal_name(signum)}", targets=targets)

    @staticmethod
    def _send(proc, signum: int) -> None:
        try:
            proc.send_signal(signum)
        except Exception:  # psutil.NoSuchProcess, ProcessLookupError
            pass

    def drain(self, timeout: Optional[float]) -> None:
        """Wait for leftover workload; after ``timeout`` SIGTERM it, 10 s later SIGKILL it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.reap()
            left = self.workload()
            if not left:
                return
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(self.POLL * 5)
        log("warning", "processes still running after the command exited; terminating them",
            pids=[p.pid for p in left], linger_timeout_s=timeout)
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for p in left:
                self._send(p, sig)
            end = time.monotonic() + grace
            while time.monotonic() < end:
                self.reap()
                left = self.workload()
                if not left:
                    return
                time.sleep(self.POLL)

    def stop_sshd(self) -> Optional[int]:
        if self.sshd is None or self.exited(self.sshd):
            return None if self.sshd is None else self.returncodes[self.sshd.pid]
        self.sshd.send_signal(signal.SIGTERM)
        code = self.wait(self.sshd, timeout=10)
        if code is None:
            self.sshd.kill()
            code = self.wait(self.sshd)
        return code


# -------------------------------------------------------------------------------------- ssh
def current_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(os.getuid())
    except KeyError:
        raise LaunchError(
            EXIT_SSH,
            f"uid {os.getuid()} has no passwd entry; sshd and ssh refuse to work without one. Add the user to the "
            f"image (e.g. useradd -u {os.getuid()} -d /home/llm -s /bin/bash llm) or provide one with nss_wrapper",
        ) from None


def start_sshd(args: argparse.Namespace, sup: Supervisor) -> None:
    missing = ssh.missing_secret_keys(args.ssh_secret_dir)
    if missing:
        raise LaunchError(EXIT_SSH, f"SSH Secret at {args.ssh_secret_dir} lacks (or cannot read) {', '.join(missing)}")
    sshd = ssh.find_sshd()
    if sshd is None:
        raise LaunchError(EXIT_SSH, "sshd not found (install openssh-server in the image)")
    user = current_user()
    if not os.access(user.pw_shell or "/bin/sh", os.X_OK):
        log("warning", "login shell of the user is not executable; sshd will refuse logins", shell=user.pw_shell)
    home = user.pw_dir
    if os.environ.get("HOME") and os.path.realpath(os.environ["HOME"]) != os.path.realpath(home):
        log("warning", "HOME differs from the passwd home; ssh reads its config from the passwd home",
            HOME=os.environ["HOME"], passwd_home=home)
    listen = tuple(args.ssh_listen or ("0.0.0.0",))
    try:
        client_config = ssh.install_client_files(args.ssh_secret_dir, home, port=args.ssh_port)
        server_config = ssh.install_server_files(
            args.ssh_secret_dir, pathlib.Path(args.run_dir, "sshd"), port=args.ssh_port, user=user.pw_name,
            listen_addresses=listen,
        )
    except OSError as e:
        raise LaunchError(EXIT_SSH, f"cannot write the ssh configuration: {e}") from None
    sup.sshd = subprocess.Popen([sshd, "-D", "-e", "-f", str(server_config)], stdin=subprocess.DEVNULL, start_new_session=True)
    log("info", "sshd started", pid=sup.sshd.pid, port=args.ssh_port, user=user.pw_name,
        sshd_config=str(server_config), ssh_config=str(client_config))
    local = "127.0.0.1" if listen[0] in ("0.0.0.0", "::", "*") else listen[0]
    deadline = time.monotonic() + 15
    while probe(Peer(local, args.ssh_port), connect_timeout=1.0) is not None:
        if sup.exited(sup.sshd):
            raise LaunchError(EXIT_SSH, f"sshd exited with status {sup.returncodes[sup.sshd.pid]} at startup (see its log above)")
        if time.monotonic() > deadline:
            raise LaunchError(EXIT_SSH, f"sshd did not listen on {local}:{args.ssh_port} within 15 s")
        time.sleep(0.1)


def check_ssh(endpoints: list[tuple[str, int]], timeout: float = 60.0) -> list[str]:
    """``ssh -p PORT HOST true`` against every endpoint, in parallel; the failures."""
    procs = {
        f"{h}:{p}": subprocess.Popen(["ssh", "-p", str(p), "-o", "BatchMode=yes", h, "true"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for h, p in endpoints
    }
    failures = []
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            err = f"no answer within {timeout:g}s"
        if proc.returncode != 0:
            lines = (err or "").strip().splitlines()
            failures.append(f"{name}: {lines[-1] if lines else f'ssh exited {proc.returncode}'}")
    return failures


def merged_ds_env(sources: list[str], extra: dict[str, str]) -> str:
    """DeepSpeed env-file text: ``sources``' KEY=VALUE lines (comments and blank lines dropped:
    DeepSpeed's parser crashes on them), ``extra`` overriding."""
    entries: dict[str, str] = {}
    for text in sources:
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            entries[key.strip()] = value.strip()
    entries.update(extra)
    return "".join(f"{k}={v}\n" for k, v in entries.items())


def ds_env_sources() -> list[str]:
    """The env files DeepSpeed's runner would read: DS_ENV_FILE (default .deepspeed_env) joined onto ~
    and the cwd (an absolute DS_ENV_FILE wins both joins)."""
    name = os.environ.get(DS_ENV_FILE, ".deepspeed_env")
    seen, texts = set(), []
    for base in (os.path.expanduser("~"), "."):
        path = os.path.realpath(os.path.join(base, name))
        if path not in seen and os.path.isfile(path):
            seen.add(path)
            texts.append(pathlib.Path(path).read_text())
    return texts


def write_ds_env_file(run_dir: str, extra: dict[str, str]) -> str:
    """pdsh does not forward most env to the remote ranks; DeepSpeed exports what is in this file."""
    path = pathlib.Path(run_dir, "deepspeed_env").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(merged_ds_env(ds_env_sources(), extra))
    return str(path)


# ------------------------------------------------------------------------------------- main
def clear_markers(marker_dir: str) -> pathlib.Path:
    d = pathlib.Path(marker_dir)
    d.mkdir(parents=True, exist_ok=True)
    for name in markers.clear(d, errors=True):
        log("info", "removing stale marker", path=str(d / name))
    return d


# Per-pod or per-shell variables that must not be copied from worker 0 to the other nodes' ranks.
NOT_FORWARDED = {"HOSTNAME", "PWD", "OLDPWD", "SHLVL", "_", "TERM", "POD_NAME", "POD_IP", "NODE_NAME",
                 "LLMTRAIN_NODE_RANK", DS_ENV_FILE, "LOCAL_RANK", "RANK", "WORLD_SIZE"}
UNSAFE_VALUE = re.compile(r'["$`\\\n]')  # DeepSpeed wraps values in "..." for the remote shell


def forwardable_env(environ: dict[str, str]) -> dict[str, str]:
    """The container's env for ranks started over ssh, which begin with sshd's empty environment:
    valueFrom variables (secrets, downward API) and the image's PATH/LD_LIBRARY_PATH included."""
    forwarded = {}
    for key, value in environ.items():
        if key in NOT_FORWARDED or key.startswith("SSH_") or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue
        if UNSAFE_VALUE.search(value):
            log("warning", "not forwarding env to ssh-launched ranks: value needs shell quoting", name=key)
            continue
        forwarded[key] = value
    return forwarded


def command_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.marker_dir:
        env[MARKER_ENV] = os.path.abspath(args.marker_dir)
        if args.sshd:
            extra = {**forwardable_env(dict(os.environ)), MARKER_ENV: env[MARKER_ENV]}
            env[DS_ENV_FILE] = write_ds_env_file(args.run_dir, extra)
    return env


def serve_sshd_only(sup: Supervisor) -> tuple[int, str]:
    while not sup.exited(sup.sshd):
        if sup.received:
            sup.drain(timeout=None)  # the ranks on this node save and exit; the kubelet bounds this
            code = sup.stop_sshd()
            return EXIT_OK, f"sshd stopped after {signal_name(sup.received)} (status {code})"
        time.sleep(Supervisor.POLL * 2)
    assert sup.sshd is not None
    code = sup.returncodes[sup.sshd.pid]
    if sup.received and code in (0, -signal.SIGTERM):
        return EXIT_OK, f"sshd stopped after {signal_name(sup.received)}"
    return (code if code > 0 else 128 - code if code < 0 else EXIT_SSH), f"sshd exited unexpectedly with status {code}"


def master_of(command: list[str]) -> tuple[Optional[str], Optional[str]]:
    """--master_addr and --master_port of a DeepSpeed runner command line."""
    values = dict(arg.split("=", 1) for arg in command if arg.startswith(("--master_addr=", "--master_port=")))
    return values.get("--master_addr"), values.get("--master_port")


def run_command(args: argparse.Namespace, sup: Supervisor) -> tuple[int, str]:
    marker_dir = clear_markers(args.marker_dir) if args.marker_dir else None
    env = command_env(args)
    log("info", "starting command", argv=args.command, marker_dir=args.marker_dir)
    try:
        sup.command = sup.spawn(args.command, env=env)
    except OSError as e:
        raise LaunchError(127 if isinstance(e, FileNotFoundError) else 126, f"cannot start {args.command[0]}: {e}") from None
    started = time.monotonic()
    returncode = sup.wait(sup.command)
    assert returncode is not None  # wait() returns once the command exited
    log("info", "command exited", returncode=returncode, runtime_s=round(time.monotonic() - started, 1))
    sup.drain(timeout=None if sup.received else args.linger_timeout)
    release_allreduce_buffers(*master_of(args.command))  # ranks killed by a signal leave theirs behind
    if marker_dir is None:
        return decide_outcome(returncode, None, sup.received)
    return decide_outcome(returncode, (marker_dir / COMPLETE_MARKER).exists(), sup.received,
                          markers.read(marker_dir, PREEMPTED_MARKER), markers.first_error(marker_dir))


def launch(args: argparse.Namespace, sup: Supervisor) -> tuple[int, str]:
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
        sup.stop_sshd()
    log("info" if code == 0 else "error", message, exit_code=code)
    write_termination_log(args.termination_log, termination_message(code, message, args.marker_dir))
    return code


def termination_message(code: int, message: str, marker_dir: Optional[str]) -> str:
    """What happened, for people, then the run's final state (final.json) for the operator."""
    final = markers.read(pathlib.Path(marker_dir), markers.FINAL) if marker_dir else None
    human = f"{message[:3000]} (exit {code})"  # the final state must survive the kubelet's 4 KiB cut
    return human + (f"\n{final_state_line(final)}" if final else "")


if __name__ == "__main__":
    sys.exit(main())
