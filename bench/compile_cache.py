"""What the compile cache in the job folder saves: the first compiled training step of RDT, cold and then warm.

    python bench/compile_cache.py [--size tiny|1b] [--device cpu|cuda]

The runner points TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR into runs/<job>/.compile-cache (runner/layout.py);
before, a container's /tmp started empty and every run compiled from scratch. This runs RDT's compiled forward and
backward (RdtRunner.compute_loss, batch 2, random inputs; bf16 on CUDA) in two fresh processes that share one new
cache folder, as two runs of a job do, and prints each first step's time and the ratio. `--size 1b` is RDT-1B
(GPU; ~100 s cold through `runner train`). Figures: README (Using it), docs/rdt.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def first_step(size: str, device: str) -> float:
    """Seconds for the first compiled forward + backward (the compile included), in this process."""
    import torch

    from policies.rdt.model import RdtConfig, RdtRunner, schedulers

    cfg = RdtConfig.tiny() if size == "tiny" else RdtConfig()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = RdtRunner(cfg).to(dtype)
        n = 2
        inputs = (torch.randn(n, 16, cfg.lang_token_dim, dtype=dtype), torch.ones(n, 16, dtype=torch.bool),
                  torch.randn(n, cfg.img_cond_len, cfg.img_token_dim, dtype=dtype),
                  torch.randn(n, 1, cfg.state_token_dim, dtype=dtype),
                  torch.randn(n, cfg.horizon, cfg.action_dim, dtype=dtype), torch.ones(n, 1, cfg.action_dim, dtype=dtype),
                  torch.full((n,), 25.0, dtype=dtype), torch.randn(n, cfg.horizon, cfg.action_dim, dtype=dtype),
                  torch.randint(0, 1000, (n,)),
                  torch.as_tensor(schedulers(cfg)[0].alphas_cumprod, dtype=torch.float32))  # type: ignore[attr-defined]
    step = torch.compile(model)
    t = time.perf_counter()
    step(*inputs).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["tiny", "1b"], default="tiny")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(f"{first_step(a.size, a.device):.2f}")
        return
    with tempfile.TemporaryDirectory() as cache:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)  # keep the caller's
        env = {**os.environ, "PYTHONPATH": path, "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor",
               "TRITON_CACHE_DIR": f"{cache}/triton"}
        times = []
        for run in ("cold (empty cache)", "warm (the first run's cache)"):
            out = subprocess.run([sys.executable, __file__, "--child", "--size", a.size, "--device", a.device],
                                 env=env, capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"the {run} run failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            times.append(float(out.stdout.strip().splitlines()[-1]))
            print(f"RDT {a.size} on {a.device}, first compiled step, {run}: {times[-1]:.1f} s", flush=True)
    print(f"warm / cold: {times[1] / times[0]:.2f} ({times[0] / times[1]:.1f}x faster to start)")


if __name__ == "__main__":
    main()
