"""ssh launcher mode: a non-root sshd from the job's SSH Secret, ssh checks of the peers, sshd-only workers."""

from __future__ import annotations

import argparse
import os
import pathlib
import pwd
import signal
import subprocess
import time

from .. import ssh
from .common import EXIT_OK, EXIT_SSH, LaunchError, log
from .outcome import signal_name
from .peers import Peer, probe
from .supervisor import Supervisor


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
