# Sourced by the scripts that run components on the host (controlplane.sh, kueue.sh, realnode.sh).
# spawn PID_FILE LOG CMD... : run CMD in its own session (stdin closed, output to LOG, fd 9, a caller's state lock,
# not inherited) and write its pid to PID_FILE. Returns once CMD has replaced the shell that wrote the pid (or that
# process has ended): until the exec, slow on a loaded machine, the pid's command line is bash's, and a liveness check
# that matches the binary would report the component dead ("exited while waiting", seen in CI with Kueue).
spawn() {
  local pid_file="$1" log="$2" i pid; shift 2
  # shellcheck disable=SC2016  # $$/$0/$@ expand in the child shell: it records its own pid, then execs
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pid_file" "$@" </dev/null >"$log" 2>&1 9>&- &
  for i in $(seq 50); do [[ -s "$pid_file" ]] && break; sleep 0.1; done
  pid="$(cat "$pid_file" 2>/dev/null)" || return 0
  for i in $(seq 100); do
    [[ -r "/proc/$pid/cmdline" ]] || return 0
    [[ "$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n 1)" == "$1" ]] && return 0
    sleep 0.1
  done
}
