"""``llm-train launch``, the command of every worker pod, one module per concern:

  cli          arguments, the launch sequence, main()
  peers        waiting for the peers' DNS names and TCP endpoints
  sshmode      the non-root sshd, ssh checks, sshd-only workers
  env          the command's environment (markers, DeepSpeed's env file for ssh-launched ranks)
  supervisor   children, exit statuses, signal forwarding to the DeepSpeed ranks (also used by `llm-train run`)
  outcome      the exit status and message that tell the truth about the command
  termination  the pod's termination message (for people, then the final state for the operator)
  common       exit codes, JSON log lines, LaunchError

The names below are this package's interface (tests, the operator's render test, `llm-train run`).
"""

from .cli import build_parser, hostport, launch, main, master_of, parse_args, run_command
from .common import EXIT_INCOMPLETE, EXIT_INPUT, EXIT_OK, EXIT_PEERS, EXIT_SSH, EXIT_USAGE, LaunchError, log
from .env import DS_ENV_FILE, command_env, ds_env_sources, forwardable_env, merged_ds_env, write_ds_env_file
from .outcome import INCOMPLETE_MESSAGE, decide_outcome, signal_name
from .peers import DNS_HINT, TCP_HINT, Peer, describe_missing, probe, wait_for_peers
from .sshmode import check_ssh, current_user, serve_sshd_only, start_sshd
from .supervisor import DS_LAUNCH_MODULE, Supervisor, become_subreaper, returncode_of
from .termination import TERMINATION_MESSAGE_MAX, termination_message, write_termination_log

__all__ = [
    "build_parser", "hostport", "launch", "main", "master_of", "parse_args", "run_command",
    "EXIT_INCOMPLETE", "EXIT_INPUT", "EXIT_OK", "EXIT_PEERS", "EXIT_SSH", "EXIT_USAGE", "LaunchError", "log",
    "DS_ENV_FILE", "command_env", "ds_env_sources", "forwardable_env", "merged_ds_env", "write_ds_env_file",
    "INCOMPLETE_MESSAGE", "decide_outcome", "signal_name",
    "DNS_HINT", "TCP_HINT", "Peer", "describe_missing", "probe", "wait_for_peers",
    "check_ssh", "current_user", "serve_sshd_only", "start_sshd",
    "DS_LAUNCH_MODULE", "Supervisor", "become_subreaper", "returncode_of",
    "TERMINATION_MESSAGE_MAX", "termination_message", "write_termination_log",
]
