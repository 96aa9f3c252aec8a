"""DeepSpeed AutoTP (tensor_parallel.autotp_size) on our llama decoder, CPU ranks: the evidence behind
docs/trainer.md's "tensor parallelism" status. Not an API field yet (see there); this guards the finding that
DeepSpeed 0.19.8's AutoTP shards the decoder (q/k/v/gate/up column-parallel, o/down row-parallel) and trains it
to the same losses as one rank.

Tolerance: the row-parallel layers add two partial products in an all-reduce instead of one matmul's sum:
float32 rounding, measured ≤ 1e-7 relative; allowed 1e-5.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainer_testlib import REPO, free_port, rank_env

pytestmark = pytest.mark.trainer

SCRIPT = r'''
import os, sys, torch
import deepspeed
from llm_trainer.model import ModelConfig, build_model
deepspeed.init_distributed(dist_backend="gloo", verbose=False)
rank, world, tp = torch.distributed.get_rank(), torch.distributed.get_world_size(), int(sys.argv[1])
cfg = ModelConfig(architecture="llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=128, seq_len=32,
                  vocab_size=256, tie_embeddings=False)
model = build_model(cfg, seed=7)
config = {"train_batch_size": 4 * world, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
          "gradient_clipping": 1.0, "zero_optimization": {"stage": 1}, "zero_allow_untested_optimizer": True,
          "steps_per_print": 10**9}
if tp > 1:
    config["tensor_parallel"] = {"autotp_size": tp, "preset_model": "llama"}
engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=0.01), config=config)
attention = engine.module.model.layers[0].self_attn
if rank == 0:
    print("SHARDS", type(attention.q_proj).__name__, attention.q_proj.weight.shape[0], type(attention.o_proj).__name__, flush=True)
g = torch.Generator().manual_seed(0)
phrase = torch.randint(0, 256, (8,), generator=g)
for step in range(6):
    batch = phrase.repeat(4, 5)[:, :33].roll(step, dims=1)  # the same batch on every rank: one data-parallel group
    loss = engine(batch[:, :-1], batch[:, 1:])
    engine.backward(loss)
    engine.step()
    if rank == 0:
        print("LOSS", loss.item(), flush=True)
# as the trainer does: a process that JIT-built DeepSpeed's shm op (a fresh machine) and exits with the group
# alive aborts in teardown ("terminate called without an active exception", exit -6)
torch.distributed.destroy_process_group()
'''


def run(tmp_path, tp: int) -> tuple[list[float], str]:
    script = tmp_path / "autotp.py"
    script.write_text(SCRIPT)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(tp)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=rank_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(tp), MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(tp)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * tp, outputs[0][-3000:]
    lines = outputs[0].splitlines()
    return [float(line.split()[1]) for line in lines if line.startswith("LOSS")], next((x for x in lines if x.startswith("SHARDS")), "")


def test_autotp_shards_our_llama_decoder_and_trains_like_one_rank(tmp_path):
    one, shards_one = run(tmp_path, 1)
    two, shards_two = run(tmp_path, 2)
    assert shards_one == "SHARDS Linear 64 Linear"
    assert shards_two == "SHARDS LinearLayer 32 LinearAllreduce"  # half of the query heads on each rank
    assert len(one) == len(two) == 6 and one[-1] < one[0] - 0.5  # it learns the repeated phrase
    assert two == pytest.approx(one, rel=1e-5)
