"""Writes what this process saw (its rank and world size, from torch.distributed when it can form a group) to
$LLMTRAIN_CHECKPOINT_DIR/seen-<pid>.json: the program-launcher tests read those files."""

import json
import os
import sys

seen = {name: os.environ.get(name) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "NNODES", "NPROC_PER_NODE",
                                                 "MASTER_ADDR", "MASTER_PORT", "PET_NNODES", "LLMTRAIN_HOSTFILE", "LLMTRAIN_RESTART",
                                                 "KUBEFLOW_TRAINER_SERVER_URL", "PYTHONPATH")}
seen["argv"] = sys.argv[1:]
try:
    import llmtraining_report  # the report helper the launcher puts on PYTHONPATH (trainer/report_helper)

    seen["reported"] = llmtraining_report.step(1, total_steps=2, loss=1.5)
except ImportError:
    seen["reported"] = None
if "--distributed" in sys.argv:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    seen["dist_rank"], seen["dist_world_size"] = dist.get_rank(), dist.get_world_size()
    dist.barrier()
    dist.destroy_process_group()
with open(os.path.join(os.environ["LLMTRAIN_CHECKPOINT_DIR"], f"seen-{os.getpid()}.json"), "w") as f:
    json.dump(seen, f)
