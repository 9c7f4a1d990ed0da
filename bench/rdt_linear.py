"""act's products of 67 rows: cuBLAS (F.linear) against few_rows.py's split-K kernel and its tiles.

    PYTHONPATH=. python bench/rdt_linear.py [--tiles 64,4,128,4,3 ...] [--top 5]

For each of RDT-1B's block products at batch 1 (67 rows: qkv 2048 -> 6144, the projections 2048 -> 2048, the FFN's
first layer with its GELU) 28 distinct weights (one a block, so each is read from memory, not L2), bf16, replayed
in one CUDA graph; prints the median of 50 replays per product for F.linear (+ GELU), and for each tile of the
kernel with its error against an fp32 product, fastest first. Results: docs/rdt.md, nineteenth session.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
from rdt_attention import replay_us  # bench/ (this folder is on the path when run as a script)

from policies.rdt import few_rows


def sweep() -> list[few_rows.Tile]:
    tiles = [few_rows.Tile(bn, sk, bk, 4, st) for bn, sk, bk, st in
             itertools.product((32, 64, 128), (1, 2, 4, 8), (64, 128), (3, 4))]
    return tiles + [few_rows.Tile(bn, sk, 128, 8, 3) for bn, sk in itertools.product((64, 128), (2, 4, 8))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", nargs="*", default=None, help="columns,splits,K step,warps,stages (default: a sweep)")
    ap.add_argument("--top", type=int, default=6)
    ap.add_argument("--rows", type=int, default=67)
    args = ap.parse_args()
    tiles = [few_rows.Tile(*(int(v) for v in t.split(","))) for t in args.tiles] if args.tiles else sweep()
    torch.manual_seed(0)
    blocks = 28
    for n, k, gelu in ((6144, 2048, False), (2048, 2048, False), (2048, 2048, True)):
        with torch.device("cuda"):
            ws = [torch.randn(n, k, dtype=torch.bfloat16) / k ** 0.5 for _ in range(blocks)]
            bs = [torch.randn(n, dtype=torch.bfloat16) for _ in range(blocks)]
            x = torch.randn(1, args.rows, k, dtype=torch.bfloat16)
        ref = [F.linear(x.float(), w.float(), b.float()) for w, b in zip(ws, bs, strict=True)]
        ref = [F.gelu(r, approximate="tanh") if gelu else r for r in ref]

        def cublas() -> list[torch.Tensor]:
            out = [F.linear(x, w, b) for w, b in zip(ws, bs, strict=True)]  # noqa: B023
            return [F.gelu(o, approximate="tanh") for o in out] if gelu else out  # noqa: B023

        def error(outs: list[torch.Tensor]) -> float:
            return max(float((o.float() - r).norm() / r.norm()) for o, r in zip(outs, ref, strict=True))  # noqa: B023

        base_us, base = replay_us(cublas, blocks)
        print(f"({args.rows} x {k}) @ ({k} x {n}){' + GELU' if gelu else ''}: F.linear {base_us:.2f} us a product, "
              f"error {error(base):.1e}", flush=True)
        rows = []
        for t in tiles:
            try:
                us, outs = replay_us(lambda t=t: [few_rows.launch(x, w, b, gelu, t)  # noqa: B023
                                                  for w, b in zip(ws, bs, strict=True)], blocks)  # noqa: B023
            except Exception as exc:  # noqa: BLE001 - a tile that does not build (shared memory) is skipped
                print(f"  {t}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
                continue
            rows.append((us, t, error(outs)))
        for us, t, err in sorted(rows)[:args.top]:
            print(f"  {','.join(map(str, t))}: {us:.2f} us ({base_us / us:.2f}x), error {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
