"""Where RDT-1B's fine-tuning step spends its GPU time: SigLIP so400m by attention implementation and compilation,
the RDT forward + backward (this repo's model, and upstream's model when UPSTREAM names a checkout of
thu-ml/RoboticsDiffusionTransformer; nothing of it is shipped here), the optimizer and the EMA.

    PYTHONPATH=. python bench/rdt_profile.py --batch 16 [--kernels 25]
    UPSTREAM=/path/to/RoboticsDiffusionTransformer PYTHONPATH=. python bench/rdt_profile.py --batch 16
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
from rdt import SO400M, cuda_ms, kernels  # bench/rdt.py (this folder is on the path when run as a script)

from policies.rdt.model import RdtConfig, RdtRunner


def siglip(n: int, rows: int) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    x = torch.randn(n, 3, 384, 384, device="cuda", dtype=torch.bfloat16)
    flop = 2 * 400e6 * 729 * n
    for impl in ("sdpa",):
        with torch.device("cuda"):
            m = SiglipVisionModel(SiglipVisionConfig(**SO400M, attn_implementation=impl)).to(torch.bfloat16).eval()
        with torch.no_grad():
            ms = cuda_ms(lambda m=m: m(pixel_values=x).last_hidden_state, reps=5, warm=2)
            print(f"siglip {impl} bf16, {n} images: {ms:.1f} ms ({flop / ms / 1e9:.0f} TFLOP/s by 2*params*tokens)")
            if impl == "sdpa":
                print(kernels(lambda m=m: m(pixel_values=x), rows))
                c = torch.compile(m)
                ms = cuda_ms(lambda c=c: c(pixel_values=x).last_hidden_state, reps=5, warm=3)
                print(f"siglip sdpa bf16 compiled, {n} images: {ms:.1f} ms ({flop / ms / 1e9:.0f} TFLOP/s)")
        del m
        torch.cuda.empty_cache()
    lean_siglip(x, flop)


def lean_siglip(x: torch.Tensor, flop: float) -> None:
    from transformers import SiglipVisionConfig

    from policies.rdt.siglip import SiglipEncoder

    with torch.device("cuda"):
        enc = SiglipEncoder(SiglipVisionConfig(**SO400M).to_dict()).to(torch.bfloat16).eval().requires_grad_(False)
    for name, f in (("eager", enc), ("compiled", torch.compile(enc))):
        ms = cuda_ms(lambda f=f: f(x), reps=5, warm=3)
        print(f"siglip lean {name} bf16, {x.shape[0]} images: {ms:.1f} ms ({flop / ms / 1e9:.0f} TFLOP/s)")
    fused = enc(x)
    layer = type(enc.layers[0])
    saved = layer.fc1_gelu
    layer.fc1_gelu = layer.fc1_then_gelu  # type: ignore[method-assign]
    try:  # the baseline of the GELU epilogue: product, then GELU
        ms = cuda_ms(lambda: enc(x), reps=5, warm=2)
        diff = (enc(x).float() - fused.float()).abs().max().item()
    finally:
        layer.fc1_gelu = saved  # type: ignore[method-assign]
    print(f"siglip lean eager bf16 with fc1 and its GELU as two kernels (not the epilogue): {ms:.1f} ms "
          f"(tokens differ by at most {diff:.3g})")
    torch.backends.cuda.enable_cudnn_sdp(False)
    ms = cuda_ms(lambda: enc(x), reps=5, warm=2)
    print(f"siglip lean eager bf16 without cuDNN attention: {ms:.1f} ms")
    torch.backends.cuda.enable_cudnn_sdp(True)
    enc.fused_add_norm = False  # each residual add and the LayerNorm after it as two eager kernels (the baseline)
    try:
        ms = cuda_ms(lambda: enc(x), reps=5, warm=2)
        diff = (enc(x).float() - fused.float()).abs().max().item()
    finally:
        enc.fused_add_norm = True
    print(f"siglip lean eager bf16 with each add and its LayerNorm as two kernels (not add_norm.py's one): {ms:.1f} ms "
          f"(tokens differ by at most {diff:.3g})")


def inputs(n: int, cfg: RdtConfig) -> list[torch.Tensor]:
    dt = torch.bfloat16
    return [torch.randn(n, 32, cfg.lang_token_dim, device="cuda", dtype=dt),
            torch.ones(n, 32, dtype=torch.bool, device="cuda"),
            torch.randn(n, cfg.img_cond_len, cfg.img_token_dim, device="cuda", dtype=dt),
            torch.randn(n, 1, 128, device="cuda", dtype=dt), torch.randn(n, cfg.horizon, 128, device="cuda", dtype=dt),
            torch.ones(n, 1, 128, device="cuda", dtype=dt), torch.full((n,), 25.0, device="cuda", dtype=dt)]


def ours(n: int, rows: int, compiled: bool) -> None:
    cfg = RdtConfig()
    with torch.device("cuda"):
        model = RdtRunner(cfg).to(torch.bfloat16)
    lang, mask, img, state, action, amask, freq = inputs(n, cfg)
    alphas = torch.linspace(0.999, 0.01, 1000, device="cuda")
    noise = torch.randn_like(action)
    steps = torch.randint(0, 1000, (n,), device="cuda")
    fwd = torch.compile(model) if compiled else model

    def step() -> None:
        loss = fwd(lang, mask, img, state, action, amask, freq, noise, steps, alphas)
        loss.backward()

    ms = cuda_ms(step, reps=5, warm=3 if compiled else 2)
    print(f"ours {'compiled' if compiled else 'eager'} bf16 fwd+bwd, batch {n}: {ms:.1f} ms "
          f"(peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)")
    print(kernels(step, rows))
    if not compiled:
        from policies.ema import Ema
        from policies.rdt.fused import MasterWeights

        opt = MasterWeights(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8,
                            max_grad_norm=1.0)
        ema = Ema(model)
        step_ms = cuda_ms(opt.step, reps=5, warm=2)
        lerp_ms = cuda_ms(lambda: ema.update_from(opt.master), reps=5, warm=2)
        print(f"fused master AdamW step (1.2B): {step_ms:.1f} ms; master EMA lerp: {lerp_ms:.1f} ms")


def upstream(n: int, rows: int, root: str) -> None:
    sys.path.insert(0, root)
    from models.rdt_runner import RDTRunner  # type: ignore[import-not-found]

    cfg = RdtConfig()
    config = {"rdt": {"hidden_size": 2048, "depth": 28, "num_heads": 32}, "lang_adaptor": "mlp2x_gelu",
              "img_adaptor": "mlp2x_gelu", "state_adaptor": "mlp3x_gelu",
              "noise_scheduler": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                                  "prediction_type": "sample", "clip_sample": False, "num_inference_timesteps": 5}}
    with torch.device("cuda"):
        model = RDTRunner(action_dim=128, pred_horizon=64, config=config, lang_token_dim=4096, img_token_dim=1152,
                          state_token_dim=128, max_lang_cond_len=1024, img_cond_len=cfg.img_cond_len,
                          lang_pos_embed_config=[("lang", -1024)],
                          img_pos_embed_config=[("image", (2, 3, -729))], dtype=torch.bfloat16).to(torch.bfloat16)
    lang, mask, img, state, action, amask, freq = inputs(n, cfg)

    def step() -> None:
        model.compute_loss(lang, mask, img, state, action, amask, freq).backward()

    print(f"upstream eager bf16 fwd+bwd, batch {n}: {cuda_ms(step, reps=5, warm=2):.1f} ms "
          f"(peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)")
    print(kernels(step, rows))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--kernels", type=int, default=25)
    ap.add_argument("--skip", default="", help="comma list of: siglip,ours,compiled,upstream")
    a = ap.parse_args()
    skip = set(a.skip.split(","))
    torch.backends.cuda.matmul.allow_tf32 = True
    if "siglip" not in skip:
        siglip(a.batch * 6, a.kernels)
    runs: list[tuple[str, Callable[[], None]]] = [
        ("ours", lambda: ours(a.batch, a.kernels, compiled=False)),
        ("upstream", lambda: upstream(a.batch, a.kernels, os.environ.get("UPSTREAM", ""))),
        ("compiled", lambda: ours(a.batch, a.kernels, compiled=True))]
    for name, run in runs:
        if name not in skip and (name != "upstream" or os.environ.get("UPSTREAM")):
            run()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
