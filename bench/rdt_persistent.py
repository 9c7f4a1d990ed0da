"""Can one persistent kernel run act's 67-row products faster than one cuBLAS launch each? A probe for issue 17.

    PYTHONPATH=. python bench/rdt_persistent.py [--layers 28] [--configs 128,8,64,8,3 ...] [--tma ...]

act's sampling graph at batch 1 is ~1,700 kernels (28 blocks, 5 solver steps), each with a floor of 5-10 us in a
CUDA graph whatever its work: cuBLAS takes ~6.2 us for 67 x 2048 -> 2048 (8 MB of weights, 1.75 us at the
memory's speed). The design the docs named is one kernel that keeps every SM and walks a block's phases with grid
barriers in between. This probe measures its core on a chain of `--layers` distinct 2048 x 2048 products
(y <- bf16(y W_l^T), 28 x 8 MB, beyond L2), in one CUDA graph each way, printing microseconds a product:

- cuBLAS: one F.linear a product (the baseline act runs today), measured first in the same process;
- per-layer: one launch of the Triton kernel below a product, no barrier;
- persistent: one launch for the whole chain, a grid barrier (an atomic count, spun on) after each product;
- the barriers alone (the same launch with no products): what a phase costs at the least;
- persistent with plain stores in place of the atomics (a wrong sum, for timing only): what the reduction costs;
- `--tma`: the persistent kernel reading the weights, then also the activations, by TMA descriptors.

The kernel: each program takes (column tile, slice of the inner dimension) tiles, multiplies the 67 rows (padded
to a 128-row tile, masked) by its weight tile on tensor cores and adds its fp32 partial into the next layer's fp32
buffer with atomics; the next layer reads that buffer rounded to bf16, as a bf16 product's output is rounded. A
configuration is (columns a tile, splits of the inner dimension, inner step, warps, stages); the grid is
min(SMs, tiles), so every program is resident and the barrier cannot deadlock (a spin limit guards it anyway and
the configuration is reported and skipped). Each row prints its largest difference from the cuBLAS chain relative
to its scale. Results: docs/rdt.md, twenty-second session.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from rdt import cuda_ms  # bench/rdt.py (this folder is on the path when run as a script)

from policies.triton_import import tl, triton

SPIN = 1 << 16  # polls before a barrier gives up and flags it (a resident grid passes in a few hundred)
ROWS = 128  # the 67 rows' tile

if triton is not None:
    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _grid_barrier(sync_ptr, target, SPIN_LIMIT: tl.constexpr):  # type: ignore[no-untyped-def]
        """Count this program in and wait until `target` programs have been; sync_ptr[1] counts give-ups."""
        tl.debug_barrier()
        tl.atomic_add(sync_ptr, 1, sem="release")
        seen = tl.atomic_add(sync_ptr, 0, sem="acquire")
        polls = 0
        while (seen < target) & (polls < SPIN_LIMIT):
            seen = tl.atomic_add(sync_ptr, 0, sem="acquire")
            polls += 1
        if polls >= SPIN_LIMIT:
            tl.atomic_add(sync_ptr + 1, 1)
        tl.debug_barrier()

    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _chain_kernel(buf_ptr, w_ptr, w_desc, a_desc, sync_ptr, M,  # type: ignore[no-untyped-def]
                      LAYERS: tl.constexpr, PROGS: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                      SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      WORK: tl.constexpr, BARRIER: tl.constexpr, STORE: tl.constexpr, TMA: tl.constexpr,
                      SPIN_LIMIT: tl.constexpr):
        """buf (LAYERS + 1, M, K) fp32: layer l reads buf[l] and adds into buf[l + 1]; w (LAYERS, N, K).

        TMA: 0 plain loads, 1 the weights by w_desc, 2 the activations by a_desc as well."""
        pid = tl.program_id(0)
        rows = tl.arange(0, BLOCK_M)
        rmask = rows < M
        KS: tl.constexpr = K // SPLITS
        TILES: tl.constexpr = (N // BLOCK_N) * SPLITS
        for layer in range(0, LAYERS):
            if WORK:
                for i in range(0, (TILES + PROGS - 1) // PROGS):
                    t = pid + i * PROGS
                    if t < TILES:
                        col0 = (t // SPLITS) * BLOCK_N
                        cols = col0 + tl.arange(0, BLOCK_N)
                        k0 = (t % SPLITS) * KS
                        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
                        for kk in range(0, KS, BLOCK_K):
                            ks = k0 + kk + tl.arange(0, BLOCK_K)
                            if TMA >= 1:
                                b = w_desc.load([layer * N + col0, k0 + kk])
                            else:
                                b = tl.load(w_ptr + layer * N * K + cols[:, None] * K + ks[None, :])
                            if TMA == 2:  # rows past M are the next buffer's: their outputs are masked below
                                a = a_desc.load([layer * M, k0 + kk])
                            else:
                                a = tl.load(buf_ptr + layer * M * K + rows[:, None] * K + ks[None, :],
                                            mask=rmask[:, None], other=0.0, cache_modifier=".cg")
                            acc = tl.dot(a.to(b.dtype), tl.trans(b), acc)
                        out = buf_ptr + (layer + 1) * M * N + rows[:, None] * N + cols[None, :]
                        if STORE:  # timing only: this split's partial stored, not added (wrong when SPLITS > 1)
                            tl.store(out, acc, mask=rmask[:, None])
                        else:
                            tl.atomic_add(out, acc, mask=rmask[:, None], sem="relaxed")
            if BARRIER:
                _grid_barrier(sync_ptr, (layer + 1) * PROGS, SPIN_LIMIT)


def chain(buf: torch.Tensor, weights: torch.Tensor, sync: torch.Tensor, config: tuple[int, ...], mode: str) -> None:
    """y <- y W_l^T for every layer, reading buf[0] and leaving each layer's fp32 output in buf[l + 1].

    buf (layers + 1, M, K) fp32 with buf[1:] zero; sync (2,) int32 zero; weights (layers, N, K). mode: per-layer,
    persistent, barriers, stores, tma (weights by TMA) or tma-a (activations too)."""
    block_n, splits, block_k, warps, stages = config
    layers, n, k = weights.shape
    m = buf.shape[1]
    tiles = (n // block_n) * splits
    sms = torch.cuda.get_device_properties(buf.device).multi_processor_count if buf.is_cuda else 8
    progs = min(sms, tiles)
    w_desc = a_desc = None
    tma = {"tma": 1, "tma-a": 2}.get(mode, 0)
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor  # type: ignore[import-not-found,unused-ignore]

        w_desc = TensorDescriptor.from_tensor(weights.view(layers * n, k), [block_n, block_k])
        a_desc = TensorDescriptor.from_tensor(buf.view(-1, k), [ROWS, block_k])
    args = dict(PROGS=progs, N=n, K=k, SPLITS=splits, BLOCK_M=ROWS, BLOCK_N=block_n, BLOCK_K=block_k,
                WORK=mode != "barriers", STORE=mode == "stores", TMA=tma, SPIN_LIMIT=SPIN, num_warps=warps,
                num_stages=stages)
    if mode == "per-layer":  # layer l's launch sees buf from l and weights from l as its layer 0
        for layer in range(layers):
            _chain_kernel[(progs,)](buf[layer:], weights[layer], None, None, sync, m, LAYERS=1, BARRIER=False,
                                    **args)
    else:
        _chain_kernel[(progs,)](buf, weights, w_desc, a_desc, sync, m, LAYERS=layers, BARRIER=True, **args)


def replay_us(body: Callable[[], None], per: int) -> float:
    """Median microseconds per `per` over 50 replays of `body` captured in one CUDA graph."""
    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return cuda_ms(graph.replay, reps=50, warm=5) / per * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--rows", type=int, default=67)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--configs", nargs="*", default=[
        "128,8,64,4,3", "128,8,64,4,4", "128,8,64,8,3", "64,4,64,4,3", "64,4,128,4,3", "64,8,64,4,3",
        "128,4,64,4,3", "256,16,64,8,3", "256,8,64,8,3", "32,2,128,4,4", "16,1,128,4,4"],
        help="columns a tile, splits of the inner dimension, inner step, warps, stages")
    ap.add_argument("--tma", nargs="*", default=["128,8,64,8,3", "128,8,64,4,4", "64,4,64,4,4", "128,8,128,8,2",
                                                 "256,16,64,8,2"], help="as --configs, for the TMA rows")
    args = ap.parse_args()
    torch.manual_seed(0)
    layers, m, d = args.layers, args.rows, args.width
    dev = torch.device("cuda")
    weights = (torch.randn(layers, d, d, device=dev) / d**0.5).to(torch.bfloat16)
    x = torch.randn(m, d, device=dev).to(torch.bfloat16)
    outs: list[torch.Tensor] = []

    def cublas() -> None:
        y = x
        for w in weights:
            y = torch.nn.functional.linear(y, w)
        outs[:] = [y]

    base_us = replay_us(cublas, layers)
    ref = outs[0].float()
    print(f"cuBLAS F.linear, {m} x {d} -> {d}, {layers} distinct weights: {base_us:.2f} us a product", flush=True)
    buf = torch.zeros(layers + 1, m, d, device=dev)
    sync = torch.zeros(2, dtype=torch.int32, device=dev)

    def setup() -> None:
        buf[1:].zero_()
        sync.zero_()
        buf[0].copy_(x)

    def measure(text: str, modes: tuple[str, ...]) -> None:
        config = tuple(int(v) for v in text.split(","))
        cells = []
        for mode in modes:
            def body(mode: str = mode) -> None:
                setup()
                chain(buf, weights, sync, config, mode)
            try:
                body()  # once outside a graph: a barrier that gave up skips the configuration
                torch.cuda.synchronize()
                if int(sync[1]):
                    cells.append(f"{mode}: a barrier gave up (programs not all resident?), skipped")
                    break
                us = replay_us(body, layers)
            except Exception as exc:  # noqa: BLE001  # a configuration Triton cannot build is reported, not fatal
                cells.append(f"{mode}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                break
            err = float((buf[layers].to(torch.bfloat16).float() - ref).abs().max()) / float(ref.abs().max())
            exact = mode not in ("barriers", "stores")
            cells.append(f"{mode} {us:.2f} us ({us / base_us:.2f}x cuBLAS" + (f", rel. diff {err:.1e})" if exact
                                                                             else ")"))
        print(f"{text}: " + "; ".join(cells), flush=True)

    for text in args.configs:
        measure(text, ("per-layer", "persistent", "barriers", "stores"))
    for text in args.tma:
        measure(text, ("tma", "tma-a"))
    print(f"(the buffers' zeroing and the input's copy, in every Triton row: {replay_us(setup, layers):.2f} us a "
          "product)")


if __name__ == "__main__":
    main()
