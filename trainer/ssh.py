"""SSH between the pods of one LLMTrainingJob (launcher mode ``ssh``).

The operator calls :func:`generate_job_keys` once per job and stores the result as the job's SSH
Secret; every worker pod mounts it read-only at ``/etc/llmtraining-ssh`` and ``llm-train launch
--sshd`` turns it into a non-root sshd plus an ssh client configuration.

Secret keys (``SECRET_KEYS``; the launcher needs the four in ``REQUIRED_SECRET_KEYS``):

* ``id_ed25519``               the job's user private key (OpenSSH format)
* ``authorized_keys``          ``restrict,pty`` + the user public key
* ``ssh_host_ed25519_key``     the job's host private key, shared by every pod of the job
* ``known_hosts``              ``* ssh-ed25519 ...``: the host key, trusted for any name
* ``id_ed25519.pub``, ``ssh_host_ed25519_key.pub``: informational, nothing reads them

The mounted files only have to be readable by the container's uid (e.g. defaultMode 0440 with the
pod's fsGroup): the private keys are copied to a writable directory with mode 0600 before use.

Everything above the "filesystem" marker is pure (text in, text out) so it is unit-testable.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile

USER_KEY = "id_ed25519"
USER_PUB = "id_ed25519.pub"
AUTHORIZED_KEYS = "authorized_keys"
HOST_KEY = "ssh_host_ed25519_key"
HOST_PUB = "ssh_host_ed25519_key.pub"
KNOWN_HOSTS = "known_hosts"
SECRET_KEYS = (USER_KEY, USER_PUB, AUTHORIZED_KEYS, HOST_KEY, HOST_PUB, KNOWN_HOSTS)
REQUIRED_SECRET_KEYS = (USER_KEY, AUTHORIZED_KEYS, HOST_KEY, KNOWN_HOSTS)

DEFAULT_SECRET_DIR = "/etc/llmtraining-ssh"  # render/names.py SSH_MOUNT (not inside the ConfigMap mount)
DEFAULT_PORT = 2222


# ------------------------------------------------------------------------------------- keys
def _ed25519_pair_cryptography(comment: str) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}"


def _ed25519_pair_ssh_keygen(comment: str) -> tuple[str, str]:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise RuntimeError("generate_job_keys needs the 'cryptography' package or the ssh-keygen binary")
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp, "key")
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
        return path.read_text(), path.with_suffix(".pub").read_text().strip()


def ed25519_pair(comment: str) -> tuple[str, str]:
    """(OpenSSH private key text, ``ssh-ed25519 AAAA... comment``)."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _ed25519_pair_ssh_keygen(comment)
    return _ed25519_pair_cryptography(comment)


def known_hosts_line(host_public_key: str, pattern: str = "*") -> str:
    """A known_hosts entry trusting ``host_public_key`` for every name matching ``pattern``.

    ``*`` also matches the ``[host]:2222`` form ssh looks up for a non-default port.
    """
    keytype, blob = host_public_key.split()[:2]
    return f"{pattern} {keytype} {blob}\n"


def authorized_keys_line(user_public_key: str) -> str:
    """``restrict`` turns off forwarding and ~/.ssh/rc; ``pty`` keeps interactive debugging possible."""
    return f"restrict,pty {user_public_key.strip()}\n"


def generate_job_keys(job: str = "llmtraining") -> dict[str, str]:
    """The string data of a job's SSH Secret: a user key pair and a host key pair (ed25519).

    Uses the ``cryptography`` package when importable, else ``ssh-keygen``.
    """
    user_private, user_public = ed25519_pair(f"{job}-user")
    host_private, host_public = ed25519_pair(f"{job}-host")
    return {
        USER_KEY: user_private,
        USER_PUB: user_public + "\n",
        AUTHORIZED_KEYS: authorized_keys_line(user_public),
        HOST_KEY: host_private,
        HOST_PUB: host_public + "\n",
        KNOWN_HOSTS: known_hosts_line(host_public),
    }


# ----------------------------------------------------------------------------------- config
def _quote(value: str) -> str:
    if any(c in value for c in '"\n\r\0'):
        raise ValueError(f"unsupported character in ssh config value {value!r}")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def sshd_config(
    *,
    port: int,
    host_key: str,
    authorized_keys: str,
    pid_file: str,
    user: str,
    listen_addresses: tuple[str, ...] = ("0.0.0.0",),
    log_level: str = "INFO",
) -> str:
    """sshd_config for an sshd that runs as ``user`` (non-root) and only lets ``user`` log in.

    Non-root sshd: no PAM (it needs root), no privilege-separation chroot (only done as root), no
    utmp/lastlog. ``StrictModes no`` because the key files live on read-only secret mounts and
    under world-writable parents (/tmp, an emptyDir HOME) that StrictModes would reject.
    """
    lines = [
        "# Written by llm-train launch (trainer/ssh.py): sshd for the pods of one LLMTrainingJob.",
        f"Port {int(port)}",
        *(f"ListenAddress {_quote(a)}" for a in listen_addresses),
        f"HostKey {_quote(host_key)}",
        f"PidFile {_quote(pid_file)}",
        f"AuthorizedKeysFile {_quote(authorized_keys)}",
        f"AllowUsers {_quote(user)}",
        # Root only when the container really runs as root (tests); the operator never does.
        f"PermitRootLogin {'prohibit-password' if user == 'root' else 'no'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "PermitEmptyPasswords no",
        "UsePAM no",
        "StrictModes no",
        "PermitUserEnvironment no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "AllowAgentForwarding no",
        "AllowStreamLocalForwarding no",
        "PermitTunnel no",
        "GatewayPorts no",
        "Compression no",
        "LoginGraceTime 60",
        # A peer pod that vanishes without a FIN is noticed in ~3 minutes.
        "ClientAliveInterval 30",
        "ClientAliveCountMax 6",
        # pdsh opens one session per node; leave room for kubectl-exec debugging sessions.
        "MaxStartups 64:30:256",
        f"LogLevel {log_level}",
    ]
    return "\n".join(lines) + "\n"


def ssh_config(*, port: int, identity_file: str, known_hosts: str, connect_timeout: int = 30) -> str:
    """Client config (``~/.ssh/config``) for every host: the job key, the job's host key, no prompts.

    pdsh and DeepSpeed's runner call plain ``ssh``, so this must live at ``<passwd home>/.ssh/config``
    (OpenSSH takes ``~`` from the passwd database, not from $HOME).
    """
    lines = [
        "# Written by llm-train launch (trainer/ssh.py): ssh between the pods of one LLMTrainingJob.",
        "Host *",
        f"    Port {int(port)}",
        f"    IdentityFile {_quote(identity_file)}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {_quote(known_hosts)}",
        "    GlobalKnownHostsFile /dev/null",
        "    StrictHostKeyChecking yes",
        "    CheckHostIP no",
        "    UpdateHostKeys no",
        "    HashKnownHosts no",
        "    BatchMode yes",
        "    PasswordAuthentication no",
        "    KbdInteractiveAuthentication no",
        "    ForwardAgent no",
        "    ForwardX11 no",
        f"    ConnectTimeout {int(connect_timeout)}",
        "    ConnectionAttempts 3",
        "    ServerAliveInterval 30",
        "    ServerAliveCountMax 6",
        "    LogLevel ERROR",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- filesystem
def missing_secret_keys(secret_dir: str | os.PathLike) -> list[str]:
    d = pathlib.Path(secret_dir)
    return [k for k in REQUIRED_SECRET_KEYS if not os.access(d / k, os.R_OK)]


def _write(path: pathlib.Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` with ``mode`` (replacing a read-only leftover of a restart). The temporary name is
    per process: two launchers sharing a home (pdsh on one machine) raced on a shared one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)  # umask
    os.replace(tmp, path)


def install_server_files(
    secret_dir: str | os.PathLike,
    state_dir: str | os.PathLike,
    *,
    port: int,
    user: str,
    listen_addresses: tuple[str, ...] = ("0.0.0.0",),
) -> pathlib.Path:
    """Copy the host key to ``state_dir`` (0600) and write sshd_config there; return its path."""
    secret, state = pathlib.Path(secret_dir), pathlib.Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    host_key = state / HOST_KEY
    _write(host_key, (secret / HOST_KEY).read_text())
    config = state / "sshd_config"
    _write(
        config,
        sshd_config(
            port=port,
            host_key=str(host_key),
            authorized_keys=str(secret / AUTHORIZED_KEYS),
            pid_file=str(state / "sshd.pid"),
            user=user,
            listen_addresses=listen_addresses,
        ),
        0o644,
    )
    return config


def install_client_files(secret_dir: str | os.PathLike, home: str | os.PathLike, *, port: int) -> pathlib.Path:
    """Write ``home/.ssh/{id_ed25519,known_hosts,config}`` (0600, dir 0700); return the config path."""
    secret, dot_ssh = pathlib.Path(secret_dir), pathlib.Path(home, ".ssh")
    dot_ssh.mkdir(parents=True, exist_ok=True)
    os.chmod(dot_ssh, 0o700)
    identity, known = dot_ssh / USER_KEY, dot_ssh / KNOWN_HOSTS
    _write(identity, (secret / USER_KEY).read_text())
    _write(known, (secret / KNOWN_HOSTS).read_text())
    config = dot_ssh / "config"
    _write(config, ssh_config(port=port, identity_file=str(identity), known_hosts=str(known)))
    return config


def find_sshd() -> str | None:
    """Absolute path of sshd (it refuses to start from a relative path: it re-executes itself)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    found = shutil.which("sshd", path=path)
    return os.path.abspath(found) if found else None
