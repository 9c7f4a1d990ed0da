"""DP3 training and inference speed on one GPU, against a straightforward reimplementation of upstream's loop.

    PYTHONPATH=. python bench/dp3.py [--steps 40] [--batch 256] [--workers 8] [--calls 1000]

Model: RoboTwin's robot_dp3.yaml at Franka dims (262,410,700 parameters), 1024-point xyzrgb clouds (xyz used),
horizon 8 / obs 3 / action 6, batch 256. Both loops use this repo's DP3 module; they differ in what upstream does
differently:
  baseline  numpy replay buffer in RAM, a torch Dataset cutting padded windows per item, DataLoader with workers
            (shuffle, pin_memory), fp32, AdamW, per-tensor EMA update
  ours      the replay buffer on the GPU, windows gathered by index (no workers, no /dev/shm), bf16 autocast,
            fused AdamW, foreach EMA (policies.dp3.train.train_step)
Inference: predict_action (10 DDIM steps, batch 1): eager fp32 as upstream vs one CUDA graph (fp32, bf16; bf16 with
the denoising step compiled, which is what infer.Policy uses on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from policies.dp3.config import Dp3Train
from policies.dp3.data import ReplayData, WindowSampler, window_table
from policies.dp3.infer import GraphedPredictor
from policies.dp3.model import DP3, Dp3Config, GemmConv1d
from policies.dp3.optim_step import GraphedStep, train_step
from policies.dp3.train import make_optimizer
from policies.ema import Ema
from policies.training import lr_scheduler

CFG = Dp3Config(state_dim=8, action_dim=8, num_points=1024)


def synthetic(episodes: int, frames: int) -> ReplayData:
    g = torch.Generator().manual_seed(0)
    n = episodes * frames
    return ReplayData(path=None,  # type: ignore[arg-type]
                      point_cloud=torch.rand(n, 1024, 6, generator=g), state=torch.randn(n, 8, generator=g),
                      action=torch.randn(n, 8, generator=g), episode_ends=np.arange(1, episodes + 1) * frames)


def new_model(data: ReplayData, device: torch.device) -> DP3:
    m = DP3(CFG)
    m.normalizer.fit({"action": data.action, "agent_pos": data.state, "point_cloud": data.point_cloud[:2000]})
    return m.to(device)


class UpstreamStyleDataset(torch.utils.data.Dataset[dict[str, np.ndarray]]):
    """Per-item window cutting with edge padding from numpy arrays, as upstream's SequenceSampler does."""

    def __init__(self, data: ReplayData, table: torch.Tensor) -> None:
        self.pc, self.state, self.action = data.point_cloud.numpy(), data.state.numpy(), data.action.numpy()
        self.table = table.numpy()

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        idx = self.table[i]
        return {"point_cloud": self.pc[idx], "agent_pos": self.state[idx], "action": self.action[idx]}


def bench_baseline(data: ReplayData, table: torch.Tensor, args: argparse.Namespace, dev: torch.device) -> tuple[float, int]:
    model = new_model(data, dev)
    ema = Ema(model, copy_module=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    loader = torch.utils.data.DataLoader(UpstreamStyleDataset(data, table), batch_size=args.batch, shuffle=True,
                                         num_workers=args.workers, pin_memory=True, drop_last=True)
    torch.cuda.reset_peak_memory_stats()
    done, t0, seen = 0, 0.0, 0
    while done < args.warmup + args.steps:
        for b in loader:
            if done == args.warmup:
                torch.cuda.synchronize()
                t0, seen = time.perf_counter(), 0
            batch = [b[k].to(dev, non_blocking=True) for k in ("point_cloud", "agent_pos", "action")]
            loss = model.compute_loss(*batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # upstream's EMAModel: one update per parameter tensor
                d = ema.decay()
                for e, p in zip(ema.model.parameters(), model.parameters(), strict=True):
                    e.mul_(d).add_(p.detach(), alpha=1 - d)
                ema.steps += 1
            done += 1
            seen += args.batch
            if done == args.warmup + args.steps:
                break
    torch.cuda.synchronize()
    rate = (seen - args.batch * 0) / (time.perf_counter() - t0)
    return rate, torch.cuda.max_memory_allocated()


def bench_ours(data: ReplayData, table: torch.Tensor, args: argparse.Namespace, dev: torch.device,
               graphed: bool, compile: bool = False) -> tuple[float, int, list[float]]:
    gdata = data.to(dev)
    torch.manual_seed(0)
    model = new_model(gdata, dev)
    ema = Ema(model, copy_module=True)
    opt = make_optimizer(model, Dp3Train(), dev, graphed)
    sched = lr_scheduler(opt, "cosine", 500, 100000)
    sampler = WindowSampler(gdata, table)
    gen = torch.Generator(dev).manual_seed(0)
    perm = torch.randperm(len(sampler), generator=torch.Generator().manual_seed(0)).to(dev)
    stepper = GraphedStep(model, opt, sched, ema, 1.0, compile=compile, say=print) if graphed else None
    losses: list[float] = []
    torch.cuda.reset_peak_memory_stats()
    t0, seen = 0.0, 0
    for i in range(max(args.warmup, 4) + args.steps):
        if i == max(args.warmup, 4):
            torch.cuda.synchronize()
            t0, seen = time.perf_counter(), 0
        rows = perm[(i * args.batch) % (len(perm) - args.batch):][: args.batch]
        batch = sampler.batch(rows)
        loss = stepper(batch, gen) if stepper else train_step(model, model, opt, sched, ema, batch, gen, 1.0)
        if i < 8:
            losses.append(float(loss))
        seen += args.batch
    torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0), torch.cuda.max_memory_allocated(), losses


def latencies(fn, calls: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1000)
    out.sort()
    return statistics.median(out), out[int(0.99 * len(out)) - 1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    data = synthetic(args.episodes, args.frames)
    table = window_table(data.episode_ends, np.ones(args.episodes, bool), CFG.horizon, CFG.n_obs_steps - 1,
                         CFG.n_action_steps - 1)
    print(f"{torch.cuda.get_device_name()}: DP3 {sum(p.numel() for p in new_model(data, dev).parameters()):,} "
          f"parameters, batch {args.batch}, {len(table)} windows")
    if not args.skip_train:
        rows = []
        base, base_mem = bench_baseline(data, table, args, dev)
        rows.append((f"baseline (DataLoader x{args.workers}, fp32)", base, base_mem))
        losses = {}
        for name, graphed, comp in (("ours, eager (GPU windows, bf16)", False, False),
                                    ("ours, CUDA graph step", True, False),
                                    ("ours, compiled + CUDA graph (train())", True, True)):
            torch.cuda.empty_cache()
            t0 = time.perf_counter()
            rate, mem, losses[name] = bench_ours(data, table, args, dev, graphed=graphed, compile=comp)
            print(f"  ({name}: {time.perf_counter() - t0:.0f} s including warm-up/compilation)", flush=True)
            rows.append((name, rate, mem))
        for name, rate, mem in rows:
            print(f"train {name:<40} {rate:8.0f} samples/s  peak {mem / 2**30:5.1f} GiB  -> {rate / base:.2f}x")
        for name, ls in losses.items():
            print(f"first losses, {name}: " + ", ".join(f"{v:.4f}" for v in ls))

    model = new_model(data, dev).eval()
    pc = data.point_cloud[: CFG.n_obs_steps][None].to(dev)
    pos = data.state[: CFG.n_obs_steps][None].to(dev)
    gen = torch.Generator(dev).manual_seed(0)
    GemmConv1d.enabled = False  # upstream: cuDNN convolutions, eager, fp32
    eager = latencies(lambda: model.predict_action(pc, pos, generator=gen), args.calls)
    GemmConv1d.enabled = True
    g32 = GraphedPredictor(model, bf16=False)
    graph32 = latencies(lambda: g32(pc, pos, generator=gen), args.calls)
    g16 = GraphedPredictor(model, bf16=True)
    graph16 = latencies(lambda: g16(pc, pos, generator=gen), args.calls)
    t0 = time.perf_counter()
    g16c = GraphedPredictor(model, bf16=True, compile=True)
    print(f"  (compiled predictor built in {time.perf_counter() - t0:.0f} s)")
    graph16c = latencies(lambda: g16c(pc, pos, generator=gen), args.calls)
    ref = model.predict_action(pc, pos, generator=torch.Generator(dev).manual_seed(1))
    for name, fn in (("graph fp32", g32), ("graph bf16", g16), ("compiled graph bf16", g16c)):
        out = fn(pc, pos, generator=torch.Generator(dev).manual_seed(1))
        print(f"{name} vs eager fp32: max |diff| {float((ref - out).abs().max()):.2e} (actions span "
              f"{float(ref.abs().max()):.2f})")
    for name, (p50, p99) in (("eager fp32 (upstream)", eager), ("graph fp32, GEMM conv", graph32),
                             ("graph bf16, GEMM conv", graph16), ("compiled graph bf16 (Policy)", graph16c)):
        print(f"inference {name:<30} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  ({eager[0] / p50:.1f}x p50)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
