"""act's image cross-attention, one block at a time: one SDPA, split_key_attention, decode_attention's tiles and parts.

    PYTHONPATH=. python bench/rdt_attention.py [--parts 8 12 16] [--tiles 64,4,3 64,4,2 ...]

Fourteen cross-attention blocks at RDT-1B's width (32 heads of 64), distinct weights and keys/values (so the
keys are read from memory, not L2), 67 queries over 4,374 image tokens at batch 1, bf16, the blocks eager and
replayed in one CUDA graph; prints the median of 50 replays per block (q and output products and q_norm included)
and each variant's largest difference from one SDPA. Results: docs/rdt.md, sixteenth session.
"""

from __future__ import annotations

import argparse
import os

import torch
from rdt import graph_us  # bench/rdt.py (this folder is on the path when run as a script)

from policies.rdt.model import CrossAttention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, nargs="+", default=[8, 12, 16])
    ap.add_argument("--tiles", nargs="+", default=["64,4,3", "64,4,2", "64,4,4", "32,4,3", "128,4,2", "128,8,2",
                                                   "128,8,3"], help="keys a step, warps, stages")
    args = ap.parse_args()
    torch.manual_seed(0)
    blocks = 14
    with torch.device("cuda"), torch.no_grad():
        attns = [CrossAttention(2048, 32).to(torch.bfloat16).eval() for _ in range(blocks)]
        x = torch.randn(1, 67, 2048, dtype=torch.bfloat16)
        kvs = [a.keys_values(torch.randn(1, 4374, 2048, dtype=torch.bfloat16)) for a in attns]

    def run(key_parts: int, decode_parts: int) -> tuple[float, list[torch.Tensor]]:
        for a in attns:
            a.key_parts, a.decode_parts = key_parts, decode_parts
        with torch.no_grad():
            return graph_us(lambda: [a(x, kv, None) for a, kv in zip(attns, kvs, strict=True)], blocks)

    base_us, base = run(0, 0)
    print(f"one SDPA: {base_us:.1f} us a block")

    def diff(outs: list[torch.Tensor]) -> float:
        return max(float((o.float() - r.float()).abs().max()) for o, r in zip(outs, base, strict=True))

    us, outs = run(6, 0)
    print(f"split_key_attention, 6 parts (one an image): {us:.1f} us a block, max |diff| {diff(outs):.4f}")
    best: tuple[float, str, int] | None = None
    for tile in args.tiles:
        os.environ["RDT_DECODE_TILE"] = tile
        for parts in args.parts:
            us, outs = run(0, parts)
            print(f"decode_attention, tile {tile}, {parts} parts: {us:.1f} us a block, max |diff| {diff(outs):.4f}",
                  flush=True)
            if best is None or us < best[0]:
                best = (us, tile, parts)
    if best is not None:
        print(f"fastest: tile {best[1]}, {best[2]} parts, {best[0]:.1f} us a block")


if __name__ == "__main__":
    main()
