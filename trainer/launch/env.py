"""The command's environment: the marker directory, and in ssh mode the env file DeepSpeed exports to remote ranks."""

from __future__ import annotations

import argparse
import os
import pathlib
import re

from ..markers import MARKER_DIR_ENV as MARKER_ENV
from .common import log

DS_ENV_FILE = "DS_ENV_FILE"


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
