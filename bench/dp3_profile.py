"""Where a DP3 training step spends GPU time: torch.profiler over eager steps (batch 256, real size), kernels
grouped by name, plus the per-part times of one step measured with CUDA events (forward, backward, optimizer, EMA).

    PYTHONPATH=. python bench/dp3_profile.py [--batch 256] [--steps 5] [--graph] [--compile] [--predict]

--graph profiles the replays of the captured step (policies.dp3.optim_step.GraphedStep) instead; --compile
compiles its loss first (what train() does on one GPU). --predict profiles one action chunk of the graph predictor
(batch 1; compiled with --compile, what infer.Policy uses) instead of training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dp3 import CFG, new_model, synthetic  # type: ignore[import-not-found]

from policies.dp3.config import Dp3Train
from policies.dp3.data import WindowSampler, window_table
from policies.dp3.optim_step import GraphedStep
from policies.dp3.train import make_optimizer
from policies.ema import Ema
from policies.training import lr_scheduler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--graph", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--predict", action="store_true")
    a = ap.parse_args()
    dev = torch.device("cuda")
    data = synthetic(100, 200).to(dev)
    table = window_table(data.episode_ends, torch.ones(100, dtype=torch.bool).numpy(), CFG.horizon,
                         CFG.n_obs_steps - 1, CFG.n_action_steps - 1)
    sampler = WindowSampler(data, table)
    model = new_model(data, dev)
    if a.predict:
        from policies.dp3.infer import GraphedPredictor

        predictor = GraphedPredictor(model.eval(), compile=a.compile)
        pc, pos = data.point_cloud[None, :3], data.state[None, :3]
        kernel_table(lambda: predictor(pc, pos), a.steps)
        return
    ema = Ema(model, copy_module=True)
    opt = make_optimizer(model, Dp3Train(), dev, graphed=a.graph)
    gen = torch.Generator(dev).manual_seed(0)
    rows = torch.arange(a.batch, device=dev)
    batch = sampler.batch(rows)
    if a.graph:
        profile_graph(GraphedStep(model, opt, lr_scheduler(opt, "cosine", 500, 10**5), ema, 1.0, compile=a.compile,
                                  say=print), batch, gen, a.steps)
        return
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(5)]

    def step(timed: bool = False) -> None:
        if timed:
            ev[0].record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(*batch, *model.draw_noise(batch[2], gen))
        if timed:
            ev[1].record()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if timed:
            ev[2].record()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if timed:
            ev[3].record()
        ema.update(model)
        if timed:
            ev[4].record()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    parts = {"forward": [], "backward": [], "clip+optimizer": [], "ema": []}
    for _ in range(a.steps):
        step(True)
        torch.cuda.synchronize()
        for i, k in enumerate(parts):
            parts[k].append(ev[i].elapsed_time(ev[i + 1]))
    print("per-part GPU ms (events, eager):", {k: round(sorted(v)[len(v) // 2], 2) for k, v in parts.items()})
    kernel_table(step, a.steps)


def profile_graph(stepper: GraphedStep, batch: tuple[torch.Tensor, ...], gen: torch.Generator, steps: int) -> None:
    import time

    for _ in range(6):
        stepper(batch, gen)  # type: ignore[arg-type]
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        stepper(batch, gen)  # type: ignore[arg-type]
    torch.cuda.synchronize()
    print(f"graphed step (compiled: {stepper.compiled}): {(time.perf_counter() - t) / 20 * 1000:.2f} ms wall a step")
    kernel_table(lambda: stepper(batch, gen), steps)  # type: ignore[arg-type]


def kernel_table(step, steps: int) -> None:  # type: ignore[no-untyped-def]
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows_ = [(e.key, e.device_time_total / steps / 1000, e.count // steps) for e in prof.key_averages()
             if e.device_time_total > 0]
    rows_.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows_)
    print(f"GPU kernel time a step: {total:.2f} ms, {sum(r[2] for r in rows_)} kernels; top (ms a step, calls a step):")
    for name, ms, n in rows_[:28]:
        print(f"  {ms:7.2f}  {n:5d}  {name[:110]}")


if __name__ == "__main__":
    main()
