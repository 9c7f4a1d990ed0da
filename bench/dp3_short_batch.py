"""The cost of an epoch's short last batch in DP3's graphed training step, on one GPU:

    PYTHONPATH=. python bench/dp3_short_batch.py [--batch 256] [--short 100] [--repeats 20] [--compile]

Same model and data as bench/dp3.py (RoboTwin's robot_dp3.yaml at Franka dims, 1024-point clouds). After the full
batch's graph is captured, times one optimizer step on a short batch (`--short` rows) two ways in the same run:
  baseline  the short batch as before: eagerly, uncompiled (every kernel launched from Python)
  ours      GraphedStep's own graph for that shape (captured at its second occurrence, then replayed)
and a full-batch graph replay for reference. Prints the median milliseconds of each and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench.dp3 import CFG, new_model, synthetic
from policies.dp3.config import Dp3Train
from policies.dp3.data import WindowSampler, window_table
from policies.dp3.optim_step import GraphedStep
from policies.dp3.train import make_optimizer
from policies.ema import Ema
from policies.training import lr_scheduler


def _ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--short", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    data = synthetic(20, 200).to(dev)
    table = window_table(data.episode_ends, np.ones(data.n_episodes, bool), CFG.horizon, CFG.n_obs_steps - 1,
                         CFG.n_action_steps - 1)
    torch.manual_seed(0)
    model = new_model(data, dev)
    opt = make_optimizer(model, Dp3Train(), dev, True)
    step = GraphedStep(model, opt, lr_scheduler(opt, "cosine", 10, 100000), Ema(model, copy_module=True), 1.0,
                       compile=args.compile, say=print)
    sampler = WindowSampler(data, table)
    gen = torch.Generator(dev).manual_seed(0)
    full = sampler.batch(torch.arange(args.batch, device=dev))
    short = sampler.batch(torch.arange(args.short, device=dev))
    for _ in range(step.warmup + 1):
        step(full, gen)  # warm-up, then the full graph's capture
    full_ms = _ms(lambda: step(full, gen), args.repeats)
    eager_ms = _ms(lambda: step._eager(step._eager_loss, [*short, *model.draw_noise(short[2], gen)]), args.repeats)
    step(short, gen, full=False)  # first sight of the shape: eager (its warm-up)
    step(short, gen, full=False)  # second: captured
    graph_ms = _ms(lambda: step(short, gen, full=False), args.repeats)
    print(f"full batch {args.batch}, graph replay: {full_ms:.2f} ms")
    print(f"short batch {args.short}: eager (baseline, as before) {eager_ms:.2f} ms; own graph {graph_ms:.2f} ms; "
          f"{eager_ms / graph_ms:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
