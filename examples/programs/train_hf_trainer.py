"""A Hugging Face Trainer program: a tiny GPT-2 built from a config (no hub download) on synthetic tokens.

It knows nothing of llm-training-operator. The launcher (torchrun here) gives it the torch.distributed env; the
operator adds LLMTRAIN_CHECKPOINT_DIR (checkpoint.volume, shared by the gang), where the Trainer saves every
--save-steps, so a restarted gang resumes with `resume_from_checkpoint`; and KUBEFLOW_TRAINER_SERVER_URL, which
makes transformers register its KubeflowCallback: the job's status.progress and Prometheus series come from it.

On CPU, accelerate forms a process group only with `use_cpu=True` (DDP over gloo); Trainer with DeepSpeed needs GPUs.
Run it with `llm-train run examples/program-hf-trainer.yaml`.
"""

import argparse
import os
import time

import torch
import transformers
from transformers.trainer_utils import get_last_checkpoint

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--save-steps", type=int, default=10)
parser.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step (tests watch progress while it runs)")
args = parser.parse_args()


class Pace(transformers.TrainerCallback):
    def on_step_end(self, training_args, state, control, **kwargs):
        time.sleep(args.step_seconds)


torch.manual_seed(0)
config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=32)
model = transformers.GPT2LMHeadModel(config)
tokens = torch.randint(0, config.vocab_size, (256, config.n_positions), generator=torch.Generator().manual_seed(1234))
data = [{"input_ids": ids, "labels": ids} for ids in tokens]

output_dir = os.environ.get("LLMTRAIN_CHECKPOINT_DIR", "./checkpoints")
training_args = transformers.TrainingArguments(
    output_dir=output_dir, max_steps=args.steps, per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1,
    save_strategy="steps", save_steps=args.save_steps, use_cpu=True, report_to="none", disable_tqdm=True)
trainer = transformers.Trainer(model=model, args=training_args, train_dataset=data, callbacks=[Pace()])
rank = training_args.process_index
print(f"rank {rank} of world size {training_args.world_size}", flush=True)

last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
if last and rank == 0:
    print(f"resumed from {os.path.basename(last)} (restart {os.environ.get('LLMTRAIN_RESTART', '0')})", flush=True)
result = trainer.train(resume_from_checkpoint=last)
if rank == 0:
    print(f"done: {trainer.state.global_step} steps at world size {training_args.world_size}, loss {result.training_loss:.4f}", flush=True)
