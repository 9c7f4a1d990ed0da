"""RDT-1B on GPUs, at real size with random weights (nothing is downloaded): fine-tuning samples/s and
`RdtPolicy.act` latency, each against a baseline measured in the same run.

    PYTHONPATH=. python bench/rdt.py --steps 12 --batch 16            # 1 GPU: baseline, runner path, inference
    PYTHONPATH=. torchrun --standalone --nproc_per_node 2 bench/rdt.py --only runner --steps 12 --batch 16

train baseline: a plain fp32 PyTorch loop (fp32 SigLIP, fp32 RDT, torch AdamW, clipping), as a script without
    accelerate/DeepSpeed would run it.
train runner:   the fine-tuning step of policies/rdt/train.py: accelerate + DeepSpeed ZeRO-2 in bf16 (config
    rendered from the job options), bf16 SigLIP, the same loss function and EMA update.
inference:      RdtPolicy.act (SigLIP on 3 camera slots x 2 frames + 5 DPM-Solver++ steps) in bf16, against
    the same call in fp32. Batches: 3 cameras x 2 frames of 384 x 384, 32 language tokens of 4096.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.rdt.model import RdtConfig, RdtRunner, schedulers
from policies.rdt.train import Ema, _loss, make_accelerator

SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
          "image_size": 384, "patch_size": 14}


def save_siglip(path: Path) -> Path:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    if not (path / "config.json").is_file():
        SiglipVisionModel(SiglipVisionConfig(**SO400M)).save_pretrained(str(path))
        SiglipImageProcessor(size={"height": 384, "width": 384}).save_pretrained(str(path))
    return path


def batch(n: int, device: torch.device, cfg: RdtConfig, rng: torch.Generator) -> dict[str, torch.Tensor]:
    return {"images": torch.randn(n, 6, 3, 384, 384, generator=rng).to(device),
            "lang_embeds": torch.randn(n, 32, cfg.lang_token_dim, generator=rng).to(device),
            "lang_attn_mask": torch.ones(n, 32, dtype=torch.bool, device=device),
            "states": torch.randn(n, 1, 128, generator=rng).to(device),
            "actions": torch.randn(n, cfg.horizon, 128, generator=rng).to(device),
            "state_elem_mask": torch.ones(n, 128, device=device), "ctrl_freqs": torch.full((n,), 25.0, device=device)}


def timed_steps(step: Any, steps: int, n: int) -> float:
    """samples/s over `steps` steps after 3 warm-up steps."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return n * steps / (time.perf_counter() - t)


def train_baseline(siglip: Path, n: int, steps: int) -> float:
    from policies.rdt.vision import SiglipTower

    dev = torch.device("cuda")
    cfg = RdtConfig(img_cond_len=6 * 729)
    tower = SiglipTower(siglip, dev, torch.float32)
    model = RdtRunner(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2)
    alphas = torch.as_tensor(schedulers(cfg)[0].alphas_cumprod, dtype=torch.float32).to(dev)  # type: ignore[attr-defined]
    b = batch(n, dev, cfg, torch.Generator().manual_seed(0))
    gen = torch.Generator(dev).manual_seed(0)

    def step() -> None:
        loss = _loss(model, tower, b, alphas, cfg, torch.float32, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed_steps(step, steps, n)


def train_runner(siglip: Path, n: int, steps: int) -> tuple[float, int]:
    from policies.rdt.vision import SiglipTower

    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29561"}.items():
        os.environ.setdefault(k, v)
    o = {"mixed_precision": "bf16", "zero_stage": 2, "gradient_accumulation_steps": 1, "train_batch_size": n}
    acc, _, _ = make_accelerator(o)
    dev = acc.device
    cfg = RdtConfig(img_cond_len=6 * 729)
    tower = SiglipTower(siglip, dev, torch.bfloat16)
    model = RdtRunner(cfg)
    ema = Ema(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2)
    model, opt = acc.prepare(model, opt)
    ema.params = {k: v.to(dev) for k, v in ema.params.items()}
    alphas = torch.as_tensor(schedulers(cfg)[0].alphas_cumprod, dtype=torch.float32).to(dev)  # type: ignore[attr-defined]
    b = batch(n, dev, cfg, torch.Generator().manual_seed(acc.process_index))
    gen = torch.Generator(dev).manual_seed(acc.process_index)

    def step() -> None:
        with acc.accumulate(model):
            loss = _loss(model, tower, b, alphas, cfg, torch.bfloat16, gen)
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
        ema.update(acc.unwrap_model(model))

    rate = timed_steps(step, steps, n) * acc.num_processes
    return rate, acc.num_processes


def inference(siglip: Path, calls: int, dtype: torch.dtype, graphs: bool = True, cameras: int = 3) -> list[float]:
    from policies.rdt.infer import RdtPolicy

    dev = torch.device("cuda")
    cfg = RdtConfig(img_cond_len=6 * 729)
    model = RdtRunner(cfg).to(dev, dtype).eval()
    meta = {"state_map": {"name": "franka", "indices": [0, 1, 2, 3, 4, 5, 6, 10]}, "img_history_size": 2,
            "ctrl_freq": 25}
    policy = RdtPolicy(model, meta, dev, dtype, siglip)
    policy.use_graphs = graphs
    rng = np.random.default_rng(0)
    slots = ("cam_high", "cam_right_wrist", "cam_left_wrist")[:cameras]
    # New frames from all three cameras at every call (as on a robot): only the previous frames are cached.
    sets = [[rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in slots] for _ in range(16)]
    emb = torch.randn(32, 4096)
    out = []
    for i in range(calls + 5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        obs = {"qpos": np.zeros(8, np.float32), "images": dict(zip(slots, sets[i % len(sets)], strict=True))}
        chunk = policy.act(obs, emb)
        torch.cuda.synchronize()
        if i >= 5:
            out.append((time.perf_counter() - t) * 1000)
    assert chunk.shape == (64, 8)
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--only", choices=["all", "runner", "inference"], default="all")
    ap.add_argument("--cameras", type=int, choices=[1, 2, 3], default=3, help="cameras with a new frame every call")
    args = ap.parse_args()
    rank0 = int(os.environ.get("RANK", "0")) == 0
    siglip = Path(os.environ.get("SIGLIP", tempfile.gettempdir())) / "rdt-bench-siglip"
    if rank0:
        save_siglip(siglip)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("nccl")
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        torch.distributed.barrier()
    if args.only in ("all", "inference"):
        bf = inference(siglip, args.calls, torch.bfloat16, cameras=args.cameras)
        eager = inference(siglip, max(10, args.calls // 2), torch.bfloat16, graphs=False, cameras=args.cameras)
        fp = inference(siglip, max(10, args.calls // 5), torch.float32, graphs=False, cameras=args.cameras)
        print(f"RDT act ({args.cameras} camera(s) with a new frame a call, SigLIP on them, 5 DPM-Solver++ steps), "
              f"CUDA graph bf16: p50 {pct(bf, 50):.1f} ms "
              f"p99 {pct(bf, 99):.1f} ms; eager bf16 p50 {pct(eager, 50):.1f} ms; eager fp32 p50 {pct(fp, 50):.1f} ms; "
              f"{statistics.median(fp) / statistics.median(bf):.2f}x faster than eager fp32")
    base = None
    if args.only == "all":
        base = train_baseline(siglip, args.batch, args.steps)
        torch.cuda.empty_cache()
        print(f"RDT train baseline (plain fp32 loop), batch {args.batch}: {base:.1f} samples/s "
              f"(peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)")
        torch.cuda.reset_peak_memory_stats()
    if args.only in ("all", "runner"):
        rate, world = train_runner(siglip, args.batch, args.steps)
        if rank0:
            ratio = f"; {rate / base:.2f}x the baseline" if base else ""
            print(f"RDT train runner path (accelerate + DeepSpeed ZeRO-2 bf16), {world} GPU(s), batch {args.batch} a GPU: "
                  f"{rate:.1f} samples/s (peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB on GPU 0){ratio}")
