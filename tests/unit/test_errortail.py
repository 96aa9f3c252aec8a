"""Which rank a failed program's termination message blames (trainer/launch/errortail.py), from its stderr tail and the
rank the launcher saw exit first (trainer/launch/rankwatch.py)."""

from __future__ import annotations

import signal

from llm_trainer.launch.errortail import failing_rank_error
from llm_trainer.launch.rankwatch import RankExit

# Pod 1 of 2 x 2 (ranks 2, 3) after global rank 3 was SIGKILLed: rank 3 printed nothing, and rank 2, whose gloo
# collective lost its peer, printed a traceback with the `[rankN]:` prefix that torch.distributed's excepthook adds once
# a process group exists (what a program's ranks under DeepSpeed's runner print in a pod).
VICTIM_TAIL = [
    "step 7 loss 0.5132",
    "[rank2]: Traceback (most recent call last):",
    '[rank2]:   File "/workspace/programs/train_deepspeed.py", line 44, in <module>',
    "[rank2]:     engine.backward(loss)",
    "[rank2]: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.88.0.12]:41232",
    "[2026-12-02 07:00:01,123] [INFO] [launch.py:319:sigkill_handler] Killing subprocess 57",
    "[2026-12-02 07:00:01,456] [ERROR] [launch.py:325:sigkill_handler] ['/opt/venv/bin/python3', '-u', 'programs/train_deepspeed.py', "
    "'--local_rank=1'] exits with return code = -9",
]


def test_a_rank_seen_killed_first_is_named_not_the_peer_whose_prefixed_traceback_came_last():
    first = RankExit("3", 58, -signal.SIGKILL, 41)
    assert failing_rank_error(VICTIM_TAIL, "1", first) == {"rank": "3", "error": "killed by SIGKILL"}


def test_a_rank_seen_failing_first_is_named_with_its_own_prefixed_exception_not_the_last_one_printed():
    tail = ["[rank2]: ValueError: bad shard 7", "[rank3]: RuntimeError: Connection closed by peer [10.88.0.12]:41232"]
    assert failing_rank_error(tail, "1", RankExit("2", 57, 1, 12)) == {"rank": "2", "error": "ValueError: bad shard 7"}


def test_without_the_watch_the_prefixed_traceback_still_names_its_rank():
    assert failing_rank_error(VICTIM_TAIL, "1") == {
        "rank": "2", "error": "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.88.0.12]:41232"}


def test_a_rank_reaped_before_the_watch_saw_how_leaves_the_tail_to_say():
    assert failing_rank_error(VICTIM_TAIL, "1", RankExit("3", 58, None, 41))["rank"] == "2"
