"""A plain DeepSpeed training program, written the way DeepSpeed's tutorials write one.

It knows nothing of llm-training-operator: DeepSpeed's launcher gives it --local_rank and the torch.distributed
env; the operator adds LLMTRAIN_CHECKPOINT_DIR (checkpoint.volume, shared by the gang) so that a restarted gang
resumes from the last save_checkpoint. Run it with `llm-train run examples/program-deepspeed.yaml`.
"""

import argparse
import os
import time

import deepspeed
import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)))  # appended by DeepSpeed's runner
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--save-every", type=int, default=5)
parser.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step (tests kill a rank mid-run)")
args = parser.parse_args()

deepspeed.init_distributed()  # gloo on CPU (DS_ACCELERATOR=cpu), NCCL on GPUs
rank, world = dist.get_rank(), dist.get_world_size()
print(f"rank {rank} of world size {world} (local rank {args.local_rank}, node {os.environ.get('NODE_RANK', '?')})", flush=True)

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)

checkpoint_dir = os.environ.get("LLMTRAIN_CHECKPOINT_DIR", "./checkpoints")
start = 0
if os.path.isfile(os.path.join(checkpoint_dir, "latest")):
    _, client_state = engine.load_checkpoint(checkpoint_dir)
    start = client_state["step"]
    print(f"rank {rank} resumed from step {start} (restart {os.environ.get('LLMTRAIN_RESTART', '0')})", flush=True)

generator = torch.Generator().manual_seed(1234 + rank)
for step in range(start + 1, args.steps + 1):
    x = torch.randn(4, 16, generator=generator)
    loss = torch.nn.functional.mse_loss(engine(x), x.sum(dim=1, keepdim=True))
    engine.backward(loss)
    engine.step()
    if rank == 0:
        print(f"step {step} loss {loss.item():.4f}", flush=True)
    if step % args.save_every == 0 or step == args.steps:
        engine.save_checkpoint(checkpoint_dir, client_state={"step": step})  # every rank calls it
    time.sleep(args.step_seconds)

if rank == 0:
    print(f"done: {args.steps} steps at world size {world}", flush=True)
dist.destroy_process_group()
