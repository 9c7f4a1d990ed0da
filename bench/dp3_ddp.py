"""DP3 training samples/s through policies.dp3.train.train on 1 GPU, or under torchrun on several.

    PYTHONPATH=. python bench/dp3_ddp.py                                             # 1 GPU
    PYTHONPATH=. BATCH=512 torchrun --standalone --nproc_per_node 2 bench/dp3_ddp.py # 2 GPUs, 256 each
Batch BATCH (default 256) in total, split across GPUs; robot_dp3.yaml at Franka dims, synthetic buffer of
100 x 200 frames; train()'s defaults (CUDA graph step, torch.compile, on several GPUs ZeRO-1 summing gradients
in bf16 and gathering the weights in fp32) unless CUDA_GRAPH=0 / COMPILE=0 / SHARD=0 (DDP instead of ZeRO-1) /
GRAD_REDUCE=fp32 / WEIGHT_GATHER=bf16.
Prints the median samples/s of the logged windows after the first two (warm-up, compilation, capture).
PROFILE=rows: also the busiest CUDA kernels a step (NCCL's included) over the ten steps after the third logged
window, on the process that logs (rank 0): what a second GPU adds, kernel by kernel.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from policies.dp3.config import Dp3Train
from policies.dp3.model import Dp3Config
from policies.dp3.train import train


class StepWindow:
    """The `say` of train(): prints each message, and with `rows` profiles the steps between the third and the
    fourth logged window (log_every apart), then prints their busiest CUDA kernels, per step."""

    def __init__(self, rows: int, steps: int) -> None:
        self.rows, self.steps, self.logged = rows, steps, 0
        self.prof: torch.profiler.profile | None = None

    def __call__(self, message: str) -> None:
        print(time.strftime("%H:%M:%S"), message, flush=True)
        if not self.rows or not message.startswith("train: step "):
            return
        self.logged += 1
        if self.logged == 3:
            torch.cuda.synchronize()
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            self.prof.start()
        elif self.logged == 4 and self.prof is not None:
            torch.cuda.synchronize()
            self.prof.stop()
            print(self.table(self.prof))

    def table(self, prof: torch.profiler.profile) -> str:
        per_step = sorted(((getattr(e, "self_device_time_total", 0.0) / self.steps / 1000, e.count // self.steps,
                            e.key) for e in prof.key_averages()), reverse=True)
        kernels = [row for row in per_step if row[0] > 0]
        nccl = sum(ms for ms, _, name in kernels if "nccl" in name.lower())
        lines = [f"CUDA kernels a step ({self.steps} steps profiled on this process): "
                 f"{sum(ms for ms, _, _ in kernels):.2f} ms, NCCL's {nccl:.2f} ms"]
        lines += [f"  {ms:7.3f} ms {n:5d}x  {name[:110]}" for ms, n, name in kernels[:self.rows]]
        return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from dp3 import synthetic  # type: ignore[import-not-found]

    steps = int(os.environ.get("STEPS", "80"))
    tmp = Path(tempfile.mkdtemp(prefix="dp3ddp-"))
    cfg = Dp3Config(state_dim=8, action_dim=8, num_points=1024)
    s = Dp3Train(epochs=1000, batch_size=int(os.environ.get("BATCH", "256")), max_steps=steps, log_every=10,
                      checkpoint_every=10**6,
                      val_every=10**6, val_ratio=0.0, cuda_graph=os.environ.get("CUDA_GRAPH", "1") == "1",
                      compile=os.environ.get("COMPILE", "1") == "1", shard_optimizer=os.environ.get("SHARD", "1") == "1",
                      grad_reduce=os.environ.get("GRAD_REDUCE", "bf16"),
                      weight_gather=os.environ.get("WEIGHT_GATHER", "fp32"))
    result = train(cfg, synthetic(100, 200), s, ckpt_dir=tmp / "ckpt", run_dir=tmp, device=torch.device("cuda"),
                   resume=False, say=StepWindow(int(os.environ.get("PROFILE", "0")), s.log_every))
    if int(os.environ.get("RANK", "0")) == 0:
        rows = [json.loads(line) for line in (tmp / "metrics.jsonl").read_text().splitlines()]
        rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r][2:]
        world = int(os.environ.get("WORLD_SIZE", "1"))
        print(f"DP3 train, {world} GPU(s), batch {s.batch_size} in total, graph {s.cuda_graph}, compile {s.compile}, "
              f"sharded {s.shard_optimizer} (gradients reduced in {s.grad_reduce}, weights gathered in "
              f"{s.weight_gather}): "
              f"{statistics.median(rates):.0f} samples/s "
              f"(peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB on GPU 0); losses logged "
              + ", ".join(f"{v:.4f}" for v in result.losses))
