"""RDT-1B on GPUs, at real size with random weights (nothing is downloaded): fine-tuning samples/s against upstream's
own training path measured in the same run, and `RdtPolicy.act` latency against eager bf16.

    PYTHONPATH=. python bench/rdt.py --batch 16 32 --steps 12                # 1 GPU: every row, each in its process
    PYTHONPATH=. python bench/rdt.py --only inference --calls 1000 --cameras 3
    PYTHONPATH=. torchrun --standalone --nproc_per_node 2 bench/rdt.py --only accelerate --batch 16

Rows (batch 16 = 96 SigLIP images of 384 x 384 a step; 32 language tokens of 4096; 64-step chunks):

upstream    upstream's train/train.py step, item by item: Accelerator(mixed_precision bf16, DeepSpeedPlugin with
            configs/zero2.json: bf16, ZeRO-2, overlap_comm, contiguous_gradients, sub_group_size 1e9; its "auto"
            sizes filled as accelerate fills them), transformers' SiglipVisionModel (its default attention) in bf16
            on every step's images, precomputed language embeddings, accelerator.backward, clip_grad_norm_(1.0)
            (a no-op under DeepSpeed, as upstream's), torch AdamW (its defaults: lr 1e-4 here, betas 0.9/0.999,
            wd 1e-2), LR scheduler step, then EMAModel.step over a bf16 copy of the model, parameter by parameter
            with mul_/add_. The model is this repo's RdtRunner (upstream's architecture and parameter names).
--train-cameras 1: the lab's robot (one camera): the other two slots of each frame hold the background picture.
Upstream's path encodes all six images a sample as it does; the runner's encodes the shown ones and one background.
--image-drop 0.1: upstream's fine-tuning default cond_mask_prob, which replaces each shown image by the background
with that probability (here exactly that share of the batch's shown images); upstream still encodes all six.

fused       the runner's default on one GPU (policies/rdt/engine.py FusedEngine, the same code `runner train` runs):
            eager bf16 SigLIP (policies/rdt/siglip.py), compiled RDT in bf16, fp32 masters, fused AdamW, clipping
            1.0, fp32 EMA by one multi-tensor lerp. SigLIP's residual adds and LayerNorms run as one Triton kernel
            each (policies/rdt/add_norm.py); FUSED_ADD_NORM=0 runs them as two eager kernels.
accelerate  the runner's several-GPU engine (AccelerateEngine: accelerate + DeepSpeed ZeRO-2 bf16, our SigLIP).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from policies import process_group
from policies.rdt.model import RdtConfig, RdtRunner, schedulers, split_image_keys

T = TypeVar("T")

SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
          "image_size": 384, "patch_size": 14}

#: upstream's configs/zero2.json
UPSTREAM_ZERO2 = {"bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
                  "gradient_accumulation_steps": "auto",
                  "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                                        "sub_group_size": 1e9}}


def save_siglip(path: Path) -> Path:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    if not (path / "config.json").is_file():
        SiglipVisionModel(SiglipVisionConfig(**SO400M)).save_pretrained(str(path))
        SiglipImageProcessor(size={"height": 384, "width": 384}).save_pretrained(str(path))
    return path


def batch(n: int, device: torch.device, cfg: RdtConfig, seed: int, cameras: int = 3,
          drop: float = 0.0) -> dict[str, torch.Tensor]:
    """Random inputs; with fewer than 3 cameras the other slots hold the background picture (one constant image),
    as TrainItems makes them, and so does the fraction `drop` of the shown images (upstream's cond_mask_prob: each
    shown image is replaced by the background with that probability; here exactly that share, at random places).
    The runner's SigLIP encodes the shown images and one background (batches.unique_images); upstream's path
    encodes all six a sample."""
    from policies.rdt.batches import unique_images

    rng = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 6, 3, 384, 384, generator=rng)
    blank = (torch.arange(6) % 3 >= cameras).expand(n, 6).clone()  # time-major: slots 0..2 at each of 2 frames
    shown = (~blank).nonzero()
    dropped = shown[torch.randperm(len(shown), generator=rng)[:round(drop * len(shown))]]
    blank[dropped[:, 0], dropped[:, 1]] = True
    images[blank] = 0.0
    select, source = unique_images(blank)
    return {"images": images.to(device), "image_select": select.to(device), "image_source": source.to(device),
            "lang_embeds": torch.randn(n, 32, cfg.lang_token_dim, generator=rng).to(device),
            "lang_attn_mask": torch.ones(n, 32, dtype=torch.bool, device=device),
            "states": torch.randn(n, 1, 128, generator=rng).to(device),
            "actions": torch.randn(n, cfg.horizon, 128, generator=rng).to(device),
            "state_elem_mask": torch.ones(n, 128, device=device), "ctrl_freqs": torch.full((n,), 25.0, device=device)}


def timed(step: Callable[[], Any], steps: int, n: int, warm: int = 3) -> float:
    """samples/s over `steps` steps after `warm` warm-up steps (compilation happens there)."""
    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return n * steps / (time.perf_counter() - t)


def options(n: int, **over: Any) -> Any:
    from policies.rdt.config import RdtTrain

    return RdtTrain.model_validate({"train_batch_size": n, **over})


def dist_env() -> None:
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29561"}.items():
        os.environ.setdefault(k, v)


def train_upstream(siglip: Path, n: int, steps: int, cameras: int = 3, drop: float = 0.0) -> float:
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin
    from transformers import SiglipVisionModel

    dist_env()
    world = int(os.environ["WORLD_SIZE"])
    ds = {**UPSTREAM_ZERO2, "bf16": {"enabled": True}, "train_micro_batch_size_per_gpu": n,
          "train_batch_size": n * world, "gradient_accumulation_steps": 1}
    acc = Accelerator(gradient_accumulation_steps=1, mixed_precision="bf16",
                      deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds))
    dev = acc.device
    vision = SiglipVisionModel.from_pretrained(str(siglip)).to(dev, torch.bfloat16).eval().requires_grad_(False)
    cfg = RdtConfig(img_cond_len=6 * 729)
    with torch.device(dev):
        rdt = RdtRunner(cfg)
        ema = RdtRunner(cfg).to(torch.bfloat16)
    ema.load_state_dict(rdt.state_dict())
    opt = torch.optim.AdamW(rdt.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    rdt, opt, sched = acc.prepare(rdt, opt, sched)
    alphas = torch.as_tensor(schedulers(cfg)[0].alphas_cumprod, dtype=torch.float32).to(dev)  # type: ignore[attr-defined]
    b = batch(n, dev, cfg, acc.process_index, cameras, drop)
    gen = torch.Generator(dev).manual_seed(acc.process_index)
    updates = [0]

    def step() -> None:
        with acc.accumulate(rdt):
            images = b["images"].to(torch.bfloat16)
            with torch.no_grad():
                img = vision(pixel_values=images.reshape(-1, 3, 384, 384)).last_hidden_state.detach()
            img = img.reshape(n, -1, 1152)
            actions = b["actions"].to(torch.bfloat16)
            noise = torch.randn(actions.shape, generator=gen, device=dev, dtype=torch.bfloat16)
            t = torch.randint(0, 1000, (n,), generator=gen, device=dev)
            loss = rdt(b["lang_embeds"].to(torch.bfloat16), b["lang_attn_mask"], img, b["states"].to(torch.bfloat16),
                       actions, b["state_elem_mask"][:, None].to(torch.bfloat16),
                       b["ctrl_freqs"].to(torch.bfloat16), noise, t, alphas)
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(rdt.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
        upstream_ema_step(ema, acc.unwrap_model(rdt), updates)

    return float(timed(step, steps, n) * acc.num_processes)


@torch.no_grad()
def upstream_ema_step(ema: torch.nn.Module, model: torch.nn.Module, updates: list[int]) -> None:
    """EMAModel.step: module by module, each immediate parameter with mul_ and add_ (bf16 here, as upstream's copy)."""
    from policies.ema import ema_decay

    d = ema_decay(updates[0])
    for theirs, mine in zip(model.modules(), ema.modules(), strict=True):
        for p, e in zip(theirs.parameters(recurse=False), mine.parameters(recurse=False), strict=True):
            e.mul_(d)
            e.add_(p.data.to(e.dtype), alpha=1 - d)
    updates[0] += 1


def train_runner(siglip: Path, n: int, steps: int, engine: str, cameras: int = 3, drop: float = 0.0) -> float:
    from policies.rdt.engine import AccelerateEngine, FusedEngine, make_accelerator
    from policies.rdt.train import _loss
    from policies.rdt.vision import SiglipTower

    dist_env()
    fused = engine == "fused"
    o = options(n, engine=engine)
    acc, _, _ = make_accelerator(o, fused)
    dev = acc.device
    tower = SiglipTower(siglip, dev, torch.bfloat16)  # eager, as policies/rdt/train.py
    cfg = RdtConfig(img_cond_len=6 * 729)
    with torch.device(dev):
        model = RdtRunner(cfg)
    eng = FusedEngine(acc, model, o, compile=True) if fused else AccelerateEngine(acc, model, o, deepspeed=True)
    alphas = torch.as_tensor(schedulers(cfg)[0].alphas_cumprod, dtype=torch.float32).to(dev)  # type: ignore[attr-defined]
    b = batch(n, dev, cfg, acc.process_index, cameras, drop)
    gen = torch.Generator(dev).manual_seed(acc.process_index)

    def step() -> None:
        eng.step([(b, gen)], lambda m, bb, g: _loss(m, tower, bb, alphas, cfg, torch.bfloat16, g))

    return float(timed(step, steps, n, warm=4 if fused else 3) * acc.num_processes)


def inference(siglip: Path, calls: int, dtype: torch.dtype, graphs: bool = True, cameras: int = 3,
              breakdown: bool = False) -> list[float]:
    from policies.rdt.infer import RdtPolicy

    dev = torch.device("cuda")
    cfg = RdtConfig(img_cond_len=6 * 729)
    with torch.device(dev):
        model = RdtRunner(cfg).to(dtype).eval()
    meta = {"state_map": {"name": "franka", "indices": [0, 1, 2, 3, 4, 5, 6, 10]}, "img_history_size": 2,
            "ctrl_freq": 25}
    policy = RdtPolicy(model, meta, dev, dtype, siglip, compile=graphs and os.environ.get("RDT_COMPILE") == "1")
    policy.use_graphs = graphs
    if not graphs:  # the eager row as the policy ran before key splitting and keeping keys/values across calls
        split_image_keys(model.model, 0)
        policy.keep_kv = False
    rng = np.random.default_rng(0)
    slots = ("cam_high", "cam_right_wrist", "cam_left_wrist")[:cameras]
    # New frames from every camera at every call (as on a robot): only the previous frames are cached.
    sets = [[rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in slots] for _ in range(16)]
    emb = torch.randn(32, 4096)
    out = []
    for i in range(calls + 10):
        torch.cuda.synchronize()
        t = time.perf_counter()
        obs = {"qpos": np.zeros(8, np.float32), "images": dict(zip(slots, sets[i % len(sets)], strict=True))}
        chunk = policy.act(obs, emb)
        torch.cuda.synchronize()
        if i >= 10:
            out.append((time.perf_counter() - t) * 1000)
    assert chunk.shape == (64, 8)
    if graphs and breakdown:
        # the graph of a call's new frames (the first call's also held the background picture: one image more)
        enc = policy.encoders[(cameras, sets[0][0].shape)]
        # the graph every later call replays (the first call's computed every slot's image keys and values; later
        # calls compute the new frames' slots and move the last frames' one history step older)
        sample = list(policy.graphs.values())[-1]
        frames = {"frames": enc.inputs["frames"].clone()}
        ins = sample.inputs

        @torch.no_grad()
        def kv() -> Any:  # eager: the part of the sample graph done once per call, before the solver steps
            return model.model.condition_kv(model.lang_adaptor(ins["lang"]),
                                            model.img_adaptor(torch.randn(1, cfg.img_cond_len, cfg.img_token_dim, device=dev,
                                                                          dtype=dtype)))

        parts = {"encode graph": lambda: enc(frames), "sample graph": lambda: sample(dict(ins)),
                 "condition K/V of every slot, eager": kv}
        for name, fn in parts.items():
            print(f"  {name}: {cuda_ms(fn):.2f} ms")
        if os.environ.get("RDT_KERNELS"):  # where the two graphs' time goes, kernel by kernel
            for name in ("encode graph", "sample graph"):
                print(f"  {name}, busiest kernels:\n{kernels(parts[name], int(os.environ['RDT_KERNELS']))}")
    return out


def kernels(fn: Callable[[], Any], rows: int) -> str:
    """The `rows` busiest CUDA kernels of one call of `fn` (after one unprofiled call), as torch.profiler's table."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return str(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=160))


def cuda_ms(fn: Callable[[], Any], reps: int = 20, warm: int = 0) -> float:
    """Median milliseconds of `fn` by CUDA events, after `warm` unmeasured calls."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        b = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(float(a.elapsed_time(b)))
    return sorted(times)[reps // 2]


def graph_us(body: Callable[[], T], per: int) -> tuple[float, T]:
    """Median microseconds per `per` over 50 replays of `body` captured in one CUDA graph (after 3 eager warm-up
    calls on a side stream), and what the captured call returned."""
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = body()
    return cuda_ms(graph.replay, reps=50, warm=5) / per * 1000, out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def one(args: argparse.Namespace, siglip: Path) -> None:
    """One row, in this process; prints `RESULT <what> <batch> <samples/s> <peak GiB>` for the driver."""
    if args.only == "inference":
        graph = inference(siglip, args.calls, torch.bfloat16, cameras=args.cameras, breakdown=True)
        eager = inference(siglip, max(20, args.calls // 10), torch.bfloat16, graphs=False, cameras=args.cameras)
        print(f"RDT act, {args.cameras} camera(s) with a new frame every call ({args.calls} calls): CUDA graphs bf16 "
              f"p50 {pct(graph, 50):.1f} ms p99 {pct(graph, 99):.1f} ms; eager bf16 p50 {pct(eager, 50):.1f} ms "
              f"({statistics.median(eager) / statistics.median(graph):.2f}x)")
        return
    n = args.batch[0]
    if os.environ.get("FUSED_ADD_NORM") == "0":  # the runner's SigLIP without add_norm.py's kernel (its baseline)
        from policies.rdt.siglip import SiglipEncoder

        SiglipEncoder.fused_add_norm = False
    rate = train_upstream(siglip, n, args.steps, args.train_cameras, args.image_drop) if args.only == "upstream" \
        else train_runner(siglip, n, args.steps, args.only, args.train_cameras, args.image_drop)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"RESULT {args.only} {n} {rate:.2f} {torch.cuda.max_memory_allocated() / 2**30:.1f}", flush=True)


def share(text: str) -> float:
    """A probability for argparse: a number from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        msg = f"must be from 0 to 1, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def drive(args: argparse.Namespace) -> None:
    """Every training row in its own process (DeepSpeed and compiled state do not leak between rows), then ratios."""
    rows: dict[tuple[str, int], tuple[float, float]] = {}
    for n in args.batch:
        for what in ("upstream", "fused"):
            cmd = [sys.executable, __file__, "--only", what, "--batch", str(n), "--steps", str(args.steps),
                   "--train-cameras", str(args.train_cameras), "--image-drop", str(args.image_drop)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode or not lines:
                print(f"{what} batch {n} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
                continue
            _, _, _, rate, peak = lines[-1].split()
            rows[(what, n)] = (float(rate), float(peak))
            print(f"RDT train {what:9s} batch {n}: {float(rate):6.1f} samples/s, peak {float(peak):.1f} GiB", flush=True)
        if ("upstream", n) in rows and ("fused", n) in rows:
            print(f"RDT train batch {n}: runner (fused) {rows[('fused', n)][0] / rows[('upstream', n)][0]:.2f}x "
                  "upstream's training path", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--only", choices=["all", "upstream", "fused", "accelerate", "inference"], default="all")
    ap.add_argument("--cameras", type=int, choices=[1, 2, 3], default=3, help="cameras with a new frame every call")
    ap.add_argument("--train-cameras", type=int, choices=[1, 2, 3], default=3,
                    help="training: cameras a sample shows (the rest background, as the lab's one-camera data)")
    ap.add_argument("--image-drop", type=share, default=0.0,
                    help="training: the share of shown images replaced by the background (upstream's cond_mask_prob, "
                         "0.1 in its fine-tuning; 0 by default, as the figures before the twenty-first session)")
    a = ap.parse_args()
    path = Path(os.environ.get("SIGLIP", tempfile.gettempdir())) / "rdt-bench-siglip"
    if int(os.environ.get("RANK", "0")) == 0:
        save_siglip(path)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        process_group.join("nccl")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        torch.distributed.barrier()
    if a.only == "all":
        drive(a)
    else:
        one(a, path)
