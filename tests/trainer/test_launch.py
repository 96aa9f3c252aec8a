"""`llm-train launch` (trainer/launch/) and the ssh helpers (trainer/ssh.py), on this machine.

Groups:
* pure functions (argument parsing, outcome, configs, keys);
* the launcher as a subprocess with tiny commands (peer waits, exit statuses, signals);
* real DeepSpeed 0.19.8 local launches on CPU (marker `trainer`): what its runner does when a rank
  or its per-node launcher is SIGKILLed, and that the launcher turns that into a failure;
* real OpenSSH on loopback (needs sshd, ssh, pdsh, libnss-wrapper: hack/test-deps-apt.txt):
  non-root sshds from the generated config, and a DeepSpeed --launcher=pdsh run through
  `llm-train launch --sshd`.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

from llm_trainer import launch as L
from llm_trainer import ssh as S

PY = sys.executable
NSS_WRAPPER = next(
    (p for p in ("/usr/lib/x86_64-linux-gnu/libnss_wrapper.so", "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
                 "/usr/lib64/libnss_wrapper.so", "/usr/lib/libnss_wrapper.so") if os.path.exists(p)),
    None,
)
SSHD = S.find_sshd()
HAVE_SSH = bool(SSHD and shutil.which("ssh") and shutil.which("pdsh") and NSS_WRAPPER)
needs_ssh = pytest.mark.skipif(not HAVE_SSH, reason="needs sshd, ssh, pdsh and libnss-wrapper (hack/test-deps-apt.txt)")


def run_launch(*args: str, timeout: float = 60, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "llm_trainer.launch", "--termination-log", "", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_file(path: pathlib.Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# ============================================================================ pure functions
class TestArgs:
    def test_command_after_double_dash(self):
        a = L.parse_args(["--wait-dns", "a", "--wait-dns", "b", "--wait-tcp", "h:2222", "--", "deepspeed", "--x", "--", "y"])
        assert a.wait_dns == ["a", "b"] and a.wait_tcp == [("h", 2222)]
        assert a.command == ["deepspeed", "--x", "--", "y"] and a.timeout == 600

    def test_hostport_ipv6(self):
        assert L.hostport("[::1]:22") == ("::1", 22)

    @pytest.mark.parametrize("argv", [[], ["--wait-dns", "x"], ["--sshd-only", "--", "true"], ["--wait-tcp", "nohost", "--", "true"],
                                      ["--wait-tcp", "h:0", "--", "true"]])
    def test_usage_errors_exit_2(self, argv):
        assert L.main(argv) == 2

    def test_sshd_only_implies_sshd(self):
        a = L.parse_args(["--sshd-only"])
        assert a.sshd and a.command == []


class TestOutcome:
    def test_complete(self):
        assert L.decide_outcome(0, True, None) == (0, "training complete")

    def test_rank_error_is_appended_to_a_failure_only(self):
        error = {"rank": 3, "error": "RuntimeError: NCCL error"}
        assert L.decide_outcome(1, False, None, None, error) == (1, "command exited with status 1; rank 3: RuntimeError: NCCL error")
        assert L.decide_outcome(0, True, None, None, error) == (0, "training complete")

    def test_worker_writes_its_error_marker(self, tmp_path, monkeypatch):
        from llm_trainer import markers, worker

        monkeypatch.setenv("RANK", "2")
        monkeypatch.delenv(markers.MARKER_DIR_ENV, raising=False)
        with pytest.raises(FileNotFoundError):
            worker.main(["--job", str(tmp_path / "missing.yaml"), "--output-dir", str(tmp_path)])
        error = markers.first_error(tmp_path / "markers")
        assert error is not None and error["rank"] == 2 and "missing.yaml" in error["error"]

    def test_first_error_is_the_earliest(self, tmp_path):
        from llm_trainer import markers

        markers.write(tmp_path, "error-rank0.json", {"rank": 0, "error": "victim", "time": 20.0})
        markers.write(tmp_path, "error-rank5.json", {"rank": 5, "error": "cause", "time": 10.0})
        assert markers.first_error(tmp_path)["error"] == "cause"
        assert markers.clear(tmp_path) == [] and markers.first_error(tmp_path) is not None  # ranks never clear errors
        assert sorted(markers.clear(tmp_path, errors=True)) == ["error-rank0.json", "error-rank5.json"]

    def test_no_marker_dir(self):
        assert L.decide_outcome(0, None, None)[0] == 0

    def test_zero_without_marker_is_a_failure(self):
        assert L.decide_outcome(0, False, None) == (1, L.INCOMPLETE_MESSAGE)

    def test_zero_without_marker_after_sigterm(self):
        code, msg = L.decide_outcome(0, False, signal.SIGTERM)
        assert code == 143 and "SIGTERM" in msg

    def test_preempted_marker(self):
        code, msg = L.decide_outcome(0, False, signal.SIGTERM, {"step": 7, "tag": "global_step7"})
        assert code == 143 and "checkpoint global_step7 saved at step 7" in msg
        assert L.decide_outcome(0, False, None, {"step": 7, "tag": "t"})[0] == 1

    def test_killed(self):
        code, msg = L.decide_outcome(-9, None, None)
        assert code == 137 and "OOM killer or a kill from outside" in msg

    def test_deepspeed_rank_killed_status(self):
        code, msg = L.decide_outcome(247, False, None)
        assert code == 247 and "SIGKILL" in msg and "OOM killer or a kill from outside" in msg

    def test_plain_failure(self):
        assert L.decide_outcome(3, True, None) == (3, "command exited with status 3")

    def test_describe_missing_names_peers(self):
        msg = L.describe_missing([L.Peer("a.b", error="does not resolve"), L.Peer("c.d", 2222, error="refused", resolved=True)], 5)
        assert "a.b" in msg and "publishNotReadyAddresses" in msg and "c.d:2222" in msg and "sshd" in msg


class TestDeepSpeedEnvFile:
    def test_merge_drops_blank_and_comments_and_overrides(self):
        text = "# comment\n\nA=1\nB = two words\nLLMTRAIN_MARKER_DIR=/old\nnot-an-assignment\n"
        out = L.merged_ds_env([text], {"LLMTRAIN_MARKER_DIR": "/m"})
        assert out == "A=1\nB=two words\nLLMTRAIN_MARKER_DIR=/m\n"

    def test_sources_follow_deepspeed_lookup(self, tmp_path, monkeypatch):
        f = tmp_path / "env"
        f.write_text("X=1\n")
        monkeypatch.setenv("DS_ENV_FILE", str(f))  # absolute: os.path.join(~, abs) == abs, read once here
        assert L.ds_env_sources() == ["X=1\n"]
        monkeypatch.setenv("DS_ENV_FILE", "nonexistent-file-xyz")
        assert L.ds_env_sources() == []


class TestSshText:
    def test_sshd_config(self):
        text = S.sshd_config(port=2222, host_key="/run/k", authorized_keys="/etc/llmtraining/ssh/authorized_keys",
                             pid_file="/tmp/p", user="llm")
        for line in ["Port 2222", "ListenAddress 0.0.0.0", "HostKey /run/k", "PidFile /tmp/p", "UsePAM no", "StrictModes no",
                     "AuthorizedKeysFile /etc/llmtraining/ssh/authorized_keys", "PasswordAuthentication no",
                     "PermitUserEnvironment no", "AllowUsers llm", "PermitRootLogin no"]:
            assert line in text.splitlines()
        assert "UsePrivilegeSeparation" not in text  # removed from OpenSSH 7.5+

    def test_ssh_config(self):
        text = S.ssh_config(port=2222, identity_file="/home/llm/.ssh/id_ed25519", known_hosts="/home/llm/.ssh/known_hosts")
        lines = [l.strip() for l in text.splitlines()]
        for line in ["Host *", "Port 2222", "IdentityFile /home/llm/.ssh/id_ed25519", "IdentitiesOnly yes",
                     "UserKnownHostsFile /home/llm/.ssh/known_hosts", "StrictHostKeyChecking yes", "BatchMode yes"]:
            assert line in lines

    def test_quoting(self):
        assert 'HostKey "/a b/k"' in S.sshd_config(port=1, host_key="/a b/k", authorized_keys="/x", pid_file="/p", user="u")
        with pytest.raises(ValueError):
            S.ssh_config(port=1, identity_file='/a"b', known_hosts="/k")

    def test_known_hosts_line(self):
        assert S.known_hosts_line("ssh-ed25519 AAAAxyz comment") == "* ssh-ed25519 AAAAxyz\n"

    @pytest.mark.skipif(SSHD is None or not shutil.which("setpriv"), reason="needs sshd and setpriv")
    def test_sshd_accepts_generated_config(self, world_readable_tmp):
        """`sshd -t` as a non-root uid (as root it would also insist on /run/sshd)."""
        tmp = world_readable_tmp
        write_secret(tmp / "secret")
        uid = 4242 if os.geteuid() == 0 else os.getuid()
        config = S.install_server_files(tmp / "secret", tmp / "state", port=free_port(), user="llm")
        drop = []
        if os.geteuid() == 0:
            drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            for path in (tmp / "state", *(tmp / "state").iterdir()):
                os.chown(path, uid, uid)
        r = subprocess.run([*drop, SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


class TestKeys:
    def test_concurrent_writers_of_one_file_do_not_collide(self, tmp_path):
        """Two launchers sharing a home (pdsh on one machine) write the same files at once."""
        import multiprocessing

        def writer(n: int) -> None:
            for i in range(200):
                S._write(tmp_path / "authorized_keys", f"{n}-{i}\n")

        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=writer, args=(n,)) for n in range(4)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
        assert (tmp_path / "authorized_keys").read_text().endswith("-199\n")

    def test_generate_job_keys(self, tmp_path):
        keys = S.generate_job_keys("job")
        assert set(keys) == set(S.SECRET_KEYS) and set(S.REQUIRED_SECRET_KEYS) <= set(keys)
        assert keys["id_ed25519"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert keys["ssh_host_ed25519_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        user_blob = keys["id_ed25519.pub"].split()[1]
        host_blob = keys["ssh_host_ed25519_key.pub"].split()[1]
        assert keys["authorized_keys"].startswith("restrict,pty ssh-ed25519 ") and user_blob in keys["authorized_keys"]
        assert keys["known_hosts"] == f"* ssh-ed25519 {host_blob}\n"
        assert user_blob != host_blob and S.generate_job_keys()["id_ed25519"] != keys["id_ed25519"]
        if shutil.which("ssh-keygen"):
            for private, public in (("id_ed25519", "id_ed25519.pub"), ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub")):
                path = tmp_path / private
                path.write_text(keys[private])
                path.chmod(0o600)
                derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True).stdout
                assert derived.split()[1] == keys[public].split()[1]

    def test_ssh_keygen_fallback(self):
        if not shutil.which("ssh-keygen"):
            pytest.skip("ssh-keygen not installed")
        private, public = S._ed25519_pair_ssh_keygen("c")
        assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----") and public.startswith("ssh-ed25519 ")


# ================================================================== launcher as a subprocess
class TestPeerWait:
    def test_dns_localhost(self):
        r = run_launch("--wait-dns", "localhost", "--timeout", "5", "--", "true")
        assert r.returncode == 0, r.stderr
        assert '"all peers ready"' in r.stderr

    def test_dns_timeout_names_the_host(self):
        start = time.monotonic()
        r = run_launch("--wait-dns", "localhost", "--wait-dns", "nope.invalid", "--timeout", "1.5", "--", "true")
        assert r.returncode == 3
        assert "nope.invalid" in r.stderr and "publishNotReadyAddresses" in r.stderr
        assert time.monotonic() - start < 30

    def test_tcp_against_a_listening_socket(self):
        with socket.socket() as srv:
            srv.bind(("127.0.0.1", 0))
            srv.listen()
            r = run_launch("--wait-tcp", f"127.0.0.1:{srv.getsockname()[1]}", "--timeout", "5", "--", "true")
        assert r.returncode == 0, r.stderr

    def test_tcp_waits_until_the_port_opens(self):
        port = free_port()
        srv = socket.socket()

        def open_later():
            time.sleep(1.5)
            srv.bind(("127.0.0.1", port))
            srv.listen()

        t = threading.Thread(target=open_later)
        t.start()
        try:
            r = run_launch("--wait-tcp", f"127.0.0.1:{port}", "--timeout", "20", "--", "true")
        finally:
            t.join()
            srv.close()
        assert r.returncode == 0, r.stderr

    def test_tcp_timeout(self):
        port = free_port()
        r = run_launch("--wait-tcp", f"127.0.0.1:{port}", "--timeout", "1", "--", "true")
        assert r.returncode == 3 and f"127.0.0.1:{port}" in r.stderr and "sshd" in r.stderr

    def test_sigterm_while_waiting(self):
        p = subprocess.Popen([PY, "-m", "llm_trainer.launch", "--termination-log", "", "--wait-dns", "nope.invalid",
                              "--timeout", "60", "--", "true"], stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 143


class TestExitStatus:
    def marker_cmd(self, write: bool) -> list[str]:
        body = "import os, pathlib\n"
        if write:
            body += "pathlib.Path(os.environ['LLMTRAIN_MARKER_DIR'], 'complete.json').write_text('{}')\n"
        return [PY, "-c", body]

    def test_exit_0_with_marker(self, tmp_path):
        r = run_launch("--marker-dir", str(tmp_path / "m"), "--", *self.marker_cmd(True))
        assert r.returncode == 0, r.stderr

    def test_exit_0_without_marker(self, tmp_path):
        r = run_launch("--marker-dir", str(tmp_path / "m"), "--", *self.marker_cmd(False))
        assert r.returncode == 1
        assert "did not reach its last step" in r.stderr

    def test_stale_marker_is_cleared(self, tmp_path):
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "complete.json").write_text("{}")
        assert run_launch("--marker-dir", str(tmp_path / "m"), "--", *self.marker_cmd(False)).returncode == 1

    def test_stale_preempted_marker_is_cleared(self, tmp_path):
        (tmp_path / "m").mkdir()
        # a tag no path or log line could contain by accident (this once matched "/tmp/cold-cache")
        (tmp_path / "m" / "preempted.json").write_text('{"step": 1, "tag": "tag-of-an-earlier-run"}')
        r = run_launch("--marker-dir", str(tmp_path / "m"), "--", *self.marker_cmd(False))
        assert r.returncode == 1
        assert "tag-of-an-earlier-run" not in r.stderr
        assert not (tmp_path / "m" / "preempted.json").exists()

    def test_nonzero_exit_passes_through(self, tmp_path):
        r = run_launch("--marker-dir", str(tmp_path / "m"), "--", "sh", "-c", "exit 7")
        assert r.returncode == 7

    def test_sigkill_is_137(self, tmp_path):
        r = run_launch("--marker-dir", str(tmp_path / "m"), "--", "sh", "-c", "kill -KILL $$")
        assert r.returncode == 137 and "SIGKILL" in r.stderr

    def test_missing_command_binary(self, tmp_path):
        r = run_launch("--", str(tmp_path / "does-not-exist"))
        assert r.returncode == 127 and "does-not-exist" in r.stderr

    def test_termination_log(self, tmp_path):
        log = tmp_path / "termination-log"
        log.write_text("")
        r = subprocess.run([PY, "-m", "llm_trainer.launch", "--termination-log", str(log), "--marker-dir", str(tmp_path / "m"),
                            "--", "true"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1
        assert "did not reach its last step" in log.read_text() and "(exit 1)" in log.read_text()

    def test_termination_log_not_created(self, tmp_path):
        assert subprocess.run([PY, "-m", "llm_trainer.launch", "--termination-log", str(tmp_path / "absent"), "--", "true"],
                              capture_output=True, timeout=60).returncode == 0
        assert not (tmp_path / "absent").exists()

    def test_waits_for_orphaned_descendants(self, tmp_path):
        """The command exits at once; its background child finishes training later: we wait (subreaper)."""
        m = tmp_path / "m"
        script = f"(sleep 1.5; echo '{{}}' > {m}/complete.json) & exit 0"
        r = run_launch("--marker-dir", str(m), "--", "sh", "-c", script)
        assert r.returncode == 0, r.stderr

    def test_leftovers_are_killed_after_linger_timeout(self, tmp_path):
        start = time.monotonic()
        r = run_launch("--marker-dir", str(tmp_path / "m"), "--linger-timeout", "1", "--", "sh", "-c", "sleep 300 & exit 0")
        assert r.returncode == 1 and time.monotonic() - start < 30
        assert "terminating them" in r.stderr


class TestSignals:
    def test_sigterm_reaches_the_child(self, tmp_path):
        got, ready = tmp_path / "got", tmp_path / "ready"
        child = textwrap.dedent(f"""
            import pathlib, signal, sys, time
            def on_term(signum, frame):
                pathlib.Path({str(got)!r}).write_text(str(signum))
                sys.exit(0)
            signal.signal(signal.SIGTERM, on_term)
            pathlib.Path({str(ready)!r}).write_text("1")
            time.sleep(60)
        """)
        p = subprocess.Popen([PY, "-m", "llm_trainer.launch", "--termination-log", "", "--marker-dir", str(tmp_path / "m"),
                              "--", PY, "-c", child], stderr=subprocess.PIPE, text=True)
        wait_for_file(ready)
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=30)
        assert got.read_text() == str(int(signal.SIGTERM))
        assert code == 143  # exited 0 without the marker, after SIGTERM: "stopped", not "complete"
        assert "stopped by SIGTERM" in p.stderr.read()


# ======================================================================== real DeepSpeed (CPU)
RANK_SCRIPT = """
import os, pathlib, signal, sys, time
mode = sys.argv[1]
rank = int(os.environ["RANK"])
marker_dir = pathlib.Path(os.environ["LLMTRAIN_MARKER_DIR"])
(marker_dir / f"rank{rank}.started").write_text(str(os.getpid()))
if mode == "sigterm":
    def on_term(signum, frame):  # the trainer saves a checkpoint here, then exits 0
        (marker_dir / f"rank{rank}.sigterm").write_text("1")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    time.sleep(120)
if rank == 1 and mode == "kill-self":
    os.kill(os.getpid(), signal.SIGKILL)           # what the OOM killer does to a rank
if rank == 1 and mode == "nccl-error":
    from llm_trainer import markers
    time.sleep(0.5)
    try:                                           # what the worker does with any exception
        raise RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was a network error")
    except RuntimeError as exc:
        markers.write_error(marker_dir, rank, exc)
        raise
if rank == 1 and mode == "kill-launcher":
    os.kill(os.getppid(), signal.SIGKILL)          # ... or to DeepSpeed's per-node launcher
    sys.exit(0)
time.sleep(2)
if rank == 0 and mode == "ok":
    (marker_dir / "complete.json").write_text("{}")
"""


@pytest.fixture
def ds_job(tmp_path):
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    (tmp_path / "m").mkdir()
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")

    def deepspeed(mode: str) -> list[str]:
        # the noSsh production command shape, single node
        return [str(pathlib.Path(PY).with_name("deepspeed")), f"--hostfile={tmp_path / 'hostfile'}", "--no_ssh", "--node_rank=0",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}", "--no_local_rank", str(tmp_path / "rank.py"), mode]

    return tmp_path, env, deepspeed


@pytest.mark.trainer
class TestRealDeepSpeed:
    def test_rank_sigkilled(self, ds_job):
        tmp, env, deepspeed = ds_job
        raw = subprocess.run(deepspeed("kill-self"), env=dict(env, LLMTRAIN_MARKER_DIR=str(tmp / "m")), capture_output=True,
                             text=True, timeout=180)
        # Observed with deepspeed 0.19.8: launch.py does sys.exit(-9) -> status 247; the runner passes it on.
        assert raw.returncode == 247, raw.stderr[-2000:]
        r = run_launch("--marker-dir", str(tmp / "m"), "--", *deepspeed("kill-self"), env=env, timeout=180)
        assert r.returncode == 247 and "SIGKILL" in r.stderr

    def test_per_node_launcher_sigkilled_runner_exits_0(self, ds_job):
        tmp, env, deepspeed = ds_job
        raw = subprocess.run(deepspeed("kill-launcher"), env=dict(env, LLMTRAIN_MARKER_DIR=str(tmp / "m")), capture_output=True,
                             text=True, timeout=180)
        # Observed with deepspeed 0.19.8: runner.py only exits non-zero for returncode > 0, and a
        # signal gives a negative one: training died, `deepspeed` says 0.
        assert raw.returncode == 0, raw.stderr[-2000:]
        r = run_launch("--marker-dir", str(tmp / "m"), "--", *deepspeed("kill-launcher"), env=env, timeout=180)
        assert r.returncode == 1, r.stderr[-3000:]
        assert "did not reach its last step" in r.stderr

    def test_first_rank_error_reaches_the_termination_message(self, ds_job):
        tmp, env, deepspeed = ds_job
        (tmp / "m" / "error-rank9.json").write_text('{"rank": 9, "error": "stale", "time": 0}')  # an earlier run's
        log = tmp / "termination-log"
        log.write_text("")
        r = subprocess.run([PY, "-m", "llm_trainer.launch", "--termination-log", str(log), "--marker-dir", str(tmp / "m"), "--",
                            *deepspeed("nccl-error")], env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 1, r.stderr[-3000:]
        message = log.read_text()
        assert "rank 1: RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970" in message and message.rstrip().endswith("(exit 1)")
        assert "stale" not in message

    def test_complete(self, ds_job):
        tmp, env, deepspeed = ds_job
        r = run_launch("--marker-dir", str(tmp / "m"), "--", *deepspeed("ok"), env=env, timeout=180)
        assert r.returncode == 0, r.stderr[-3000:]

    def test_sigterm_reaches_the_ranks(self, ds_job):
        tmp, env, deepspeed = ds_job
        m = tmp / "m"
        p = subprocess.Popen([PY, "-m", "llm_trainer.launch", "--termination-log", "", "--marker-dir", str(m), "--",
                              *deepspeed("sigterm")], env=env, stderr=subprocess.PIPE, text=True)
        wait_for_file(m / "rank0.started", 120)
        wait_for_file(m / "rank1.started", 30)
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        code = p.wait(timeout=60)
        err = p.stderr.read()
        assert (m / "rank0.sigterm").exists() and (m / "rank1.sigterm").exists(), err[-3000:]
        assert code == 143, err[-3000:]
        assert "forwarded SIGTERM to the DeepSpeed ranks" in err


# ================================================================================ real OpenSSH
def nss_files(root: pathlib.Path, uid: int, gid: int, name: str, home: pathlib.Path) -> dict[str, str]:
    """nss_wrapper passwd/group: /etc/passwd with ``uid``'s entry replaced, so ssh/sshd use ``home``."""
    entries = [l for l in pathlib.Path("/etc/passwd").read_text().splitlines() if l and l.split(":")[2] != str(uid)]
    entries.append(f"{name}:x:{uid}:{gid}:{name}:{home}:/bin/sh")
    groups = [l for l in pathlib.Path("/etc/group").read_text().splitlines() if l and l.split(":")[2] != str(gid)]
    groups.append(f"{name}:x:{gid}:")
    (root / "passwd").write_text("\n".join(entries) + "\n")
    (root / "group").write_text("\n".join(groups) + "\n")
    os.chmod(root / "passwd", 0o644)
    os.chmod(root / "group", 0o644)
    return {"LD_PRELOAD": NSS_WRAPPER, "NSS_WRAPPER_PASSWD": str(root / "passwd"), "NSS_WRAPPER_GROUP": str(root / "group")}


@pytest.fixture
def world_readable_tmp():
    """A temp dir an unprivileged uid can traverse (pytest's tmp_path is 0700 under root)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="llmtrain-ssh-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_secret(d: pathlib.Path) -> None:
    """Like the Secret mount: root-owned, read-only (0444 stands in for 0440 + fsGroup)."""
    d.mkdir(mode=0o755)
    for k, v in S.generate_job_keys("test").items():
        (d / k).write_text(v)
        os.chmod(d / k, 0o444)


@needs_ssh
def test_nonroot_sshd_loopback(world_readable_tmp):
    """Two non-root sshds (127.0.0.2 and 127.0.0.3, same port, like two pods) from the generated
    sshd_config; ssh and pdsh as the same uid through the generated ~/.ssh/config."""
    tmp = world_readable_tmp
    uid = gid = 4242 if os.geteuid() == 0 else os.getuid()
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"] if os.geteuid() == 0 else []
    home = tmp / "home"
    home.mkdir()
    write_secret(tmp / "secret")
    env = dict(os.environ, **nss_files(tmp, uid, gid, "llm", home))
    port = free_port()
    configs = []
    for n in (2, 3):
        configs.append(S.install_server_files(tmp / "secret", tmp / f"sshd{n}", port=port, user="llm", listen_addresses=(f"127.0.0.{n}",)))
    S.install_client_files(tmp / "secret", home, port=port)
    for path in [home, *home.rglob("*"), tmp / "sshd2", tmp / "sshd3", *tmp.glob("sshd?/*")]:
        os.chown(path, uid, gid)
    sshds = [subprocess.Popen([*drop, SSHD, "-D", "-e", "-f", str(c)], env=env, stderr=subprocess.PIPE, text=True) for c in configs]
    try:
        for n in (2, 3):
            deadline = time.monotonic() + 15
            while L.probe(L.Peer(f"127.0.0.{n}", port), 0.5):
                assert time.monotonic() < deadline and all(s.poll() is None for s in sshds), "sshd did not start"
                time.sleep(0.1)
        # plain ssh, port from the config, host key checked against "* ssh-ed25519 ..."
        r = subprocess.run([*drop, "ssh", "127.0.0.2", "id -u"], env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == str(uid), r.stderr
        # explicit -p like DeepSpeed's check and --check-ssh
        r = subprocess.run([*drop, "ssh", "-p", str(port), "127.0.0.3", "true"], env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        # pdsh as DeepSpeed calls it: %n is the position in -w (= hostfile order)
        r = subprocess.run([*drop, "pdsh", "-S", "-f", "1024", "-w", "127.0.0.3,127.0.0.2", "echo rank=%n"],
                           env=dict(env, PDSH_RCMD_TYPE="ssh", PDSH_SSH_ARGS_APPEND=f"-p {port}"), capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.splitlines()) == ["127.0.0.2: rank=1", "127.0.0.3: rank=0"]
        # a key the server does not know is refused (BatchMode: no prompt)
        other = tmp / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        os.chown(other, uid, gid)
        r = subprocess.run([*drop, "ssh", "-F", "/dev/null", "-p", str(port), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                            "-i", str(other), "-o", f"UserKnownHostsFile={home}/.ssh/known_hosts", "-o", "StrictHostKeyChecking=yes",
                            "127.0.0.2", "true"], env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 255 and "Permission denied" in r.stderr
    finally:
        for s in sshds:
            s.terminate()
        for s in sshds:
            assert s.wait(timeout=10) == 0  # sshd exits 0 on SIGTERM


PDSH_RANK_SCRIPT = """
import os, pathlib, datetime
import torch, torch.distributed as dist
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
t = torch.ones(1) * (dist.get_rank() + 1)
dist.all_reduce(t)
marker_dir = pathlib.Path(os.environ["LLMTRAIN_MARKER_DIR"])
(marker_dir / f"rank{dist.get_rank()}.json").write_text(
    f'{{"sum": {int(t.item())}, "from_env_file": "{os.environ.get("FROM_ENV_FILE")}", "master": "{os.environ["MASTER_ADDR"]}"}}')
dist.barrier()
if dist.get_rank() == 0:
    (marker_dir / "complete.json").write_text("{}")
dist.destroy_process_group()
"""


@needs_ssh
@pytest.mark.trainer
def test_deepspeed_pdsh_through_launch_sshd(world_readable_tmp):
    """ssh mode end to end on loopback: `launch --sshd --sshd-only` as worker 1 (127.0.0.3),
    `launch --sshd ... -- deepspeed --launcher=pdsh` as worker 0 (127.0.0.2).

    sshd runs as the test's uid (root here: the ranks must read the venv under /root; a non-root
    sshd is covered by test_nonroot_sshd_loopback). nss_wrapper moves the passwd home to a temp dir
    so ~/.ssh/config is written there, not into the real home."""
    tmp = world_readable_tmp
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege-separation dir root sshd insists on
    user = L.current_user()
    home = tmp / "home"
    home.mkdir()
    write_secret(tmp / "secret")
    env = dict(os.environ, **nss_files(tmp, os.getuid(), os.getgid(), user.pw_name, home))
    # what the operator renders to /etc/llmtraining/deepspeed_env (blank and comment lines must not crash DeepSpeed)
    (tmp / "deepspeed_env").write_text("# rendered by the operator\n\nDS_ACCELERATOR=cpu\nOMP_NUM_THREADS=1\nFROM_ENV_FILE=yes\n")
    env.update(DS_ENV_FILE=str(tmp / "deepspeed_env"), DS_ACCELERATOR="cpu")
    (tmp / "hostfile").write_text("127.0.0.2 slots=1\n127.0.0.3 slots=1\n")
    (tmp / "rank.py").write_text(PDSH_RANK_SCRIPT)
    port, master_port = free_port(), free_port()
    common = ["--termination-log", "", "--ssh-secret-dir", str(tmp / "secret"), "--ssh-port", str(port)]
    worker1 = subprocess.Popen([PY, "-m", "llm_trainer.launch", *common, "--sshd", "--sshd-only", "--ssh-listen", "127.0.0.3",
                                "--run-dir", str(tmp / "w1")], env=env, stderr=subprocess.PIPE, text=True)
    try:
        m = tmp / "markers"
        r = subprocess.run(
            [PY, "-m", "llm_trainer.launch", *common, "--sshd", "--ssh-listen", "127.0.0.2", "--run-dir", str(tmp / "w0"),
             "--wait-dns", "127.0.0.2", "--wait-dns", "127.0.0.3", "--wait-tcp", f"127.0.0.2:{port}", "--wait-tcp", f"127.0.0.3:{port}",
             "--timeout", "60", "--marker-dir", str(m), "--",
             str(pathlib.Path(PY).with_name("deepspeed")), f"--hostfile={tmp / 'hostfile'}", "--launcher=pdsh", f"--ssh_port={port}",
             "--master_addr=127.0.0.2", f"--master_port={master_port}", "--no_local_rank", str(tmp / "rank.py")],
            env=env, capture_output=True, text=True, timeout=300, cwd=tmp)
        assert r.returncode == 0, r.stderr[-5000:] + r.stdout[-3000:]
        for rank in (0, 1):
            text = (m / f"rank{rank}.json").read_text()
            assert '"sum": 3' in text and '"from_env_file": "yes"' in text and '"master": "127.0.0.2"' in text
        assert (home / ".ssh" / "config").exists() and oct((home / ".ssh" / "id_ed25519").stat().st_mode & 0o777) == "0o600"
        assert "LLMTRAIN_MARKER_DIR=" in (tmp / "w0" / "deepspeed_env").read_text()
    finally:
        worker1.send_signal(signal.SIGTERM)
        code = worker1.wait(timeout=30)
        err = worker1.stderr.read()
    assert code == 0, err[-3000:]


def test_ssh_launched_ranks_get_the_containers_env():
    from llm_trainer.launch import forwardable_env

    env = {
        "PATH": "/opt/venv/bin:/usr/bin", "LD_LIBRARY_PATH": "/usr/local/nvidia/lib64",
        "WANDB_API_KEY": "from-a-secret",  # valueFrom: only in the process env, not in the ConfigMap
        "HOSTNAME": "job-worker-0", "POD_NAME": "job-worker-0", "LLMTRAIN_NODE_RANK": "0",  # per pod
        "SSH_CONNECTION": "x", "DS_ENV_FILE": "/etc/llmtraining/deepspeed_env",
        "QUOTED": 'has "quotes"', "DOLLAR": "a$b",  # DeepSpeed's "..." wrapping would mangle these
    }
    assert forwardable_env(env) == {"PATH": "/opt/venv/bin:/usr/bin", "LD_LIBRARY_PATH": "/usr/local/nvidia/lib64", "WANDB_API_KEY": "from-a-secret"}
