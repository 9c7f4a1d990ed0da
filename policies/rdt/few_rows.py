"""Linear layers over few rows (act's denoising steps) as one split-K Triton kernel.

At batch 1 each of RDT's five denoising steps multiplies 67 tokens (step, frequency, state, 64 actions) by every
block's weights: six products of 67 rows a block (qkv 2048 -> 6144, the self-attention's and cross-attention's
output projections, the cross-attention's queries, the FFN's two layers), 28 blocks. Each weight is read once
from memory, so a product's floor is its weight's bytes over the memory bandwidth (8.4 MB of a 2048 x 2048 bf16
weight: ~2 us on an H200). cuBLAS's kernels for 67 rows ran ~6.4 us a product (eighteenth session, docs/rdt.md):
a tile of 128 output columns a program gives 16 programs for 2,048 columns on 132 multiprocessors.

Here the reduction dimension is split too: `split` programs each multiply a slice of K for one tile of
`block_n` columns, so `n / block_n x split` programs read the weight at once and each reads only its slice of the
input rows. Each program writes its fp32 partial to a workspace and counts itself in a per-tile counter; the last
one of a tile sums the tile's partials in split order (the same sum whichever program is last: deterministic),
adds the bias, applies GELU (tanh) when asked, writes the bf16 output and resets the counter to zero for the next
launch. Counters are kept per device and stream (launches on one stream run one after another).

`linear` is a torch custom operator (opaque to torch.compile, capturable in CUDA graphs), inference only (no
backward). It applies where `applies` says: CUDA, bf16/fp16, at most MAX_ROWS rows, Triton able to build.
Under TRITON_INTERPRET=1 the kernel also runs on fp32 CPU tensors.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F

from policies.cuda_graph import kernels_unavailable
from policies.triton_import import tl, triton

MAX_ROWS = 128


class Tile(NamedTuple):
    """Columns a program, K splits, K a step, warps, pipeline stages."""

    block_n: int
    split: int
    block_k: int
    warps: int
    stages: int


DEFAULT = Tile(64, 4, 128, 4, 3)


if triton is not None:
    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _tanh(x):  # type: ignore[no-untyped-def]
        e = tl.exp(-2.0 * tl.abs(x))
        t = (1.0 - e) / (1.0 + e)
        return tl.where(x >= 0, t, -t)

    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _finish(acc, b_ptr, y_ptr, rows, cols, m, n, sym, GELU: tl.constexpr):  # type: ignore[no-untyped-def]
        acc = acc + tl.load(b_ptr + cols, mask=cols < n, other=0.0).to(tl.float32)[None, :]
        if GELU:
            acc = 0.5 * acc * (1.0 + _tanh(0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)))
        tl.store(y_ptr + rows[:, None] * sym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(rows[:, None] < m) & (cols[None, :] < n))

    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, part_ptr, count_ptr,  # type: ignore[no-untyped-def]
                       m, n, k, sxm, sxk, swn, swk, sym, K_PER: tl.constexpr, SPLIT: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GELU: tl.constexpr):
        tile, part = tl.program_id(0), tl.program_id(1)
        rows = tl.arange(0, BLOCK_M)
        cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for lo in range(0, K_PER, BLOCK_K):
            ks = part * K_PER + lo + tl.arange(0, BLOCK_K)
            kmask = ks < k
            x = tl.load(x_ptr + rows[:, None] * sxm + ks[None, :] * sxk, mask=(rows[:, None] < m) & kmask[None, :],
                        other=0.0)
            w = tl.load(w_ptr + cols[:, None] * swn + ks[None, :] * swk, mask=(cols[:, None] < n) & kmask[None, :],
                        other=0.0)
            acc = tl.dot(x, tl.trans(w), acc)
        if SPLIT == 1:
            _finish(acc, b_ptr, y_ptr, rows, cols, m, n, sym, GELU)
        else:
            offs = rows[:, None] * n + cols[None, :]
            inside = (rows[:, None] < m) & (cols[None, :] < n)
            tl.store(part_ptr + part * m * n + offs, acc, mask=inside)
            tl.debug_barrier()  # every thread's partial is stored before the count says so
            ticket = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel")
            if ticket == SPLIT - 1:  # the tile's last program: sum the partials in split order
                total = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
                for p in range(0, SPLIT):
                    total += tl.load(part_ptr + p * m * n + offs, mask=inside, other=0.0, cache_modifier=".cg")
                tl.store(count_ptr + tile, 0)
                _finish(total, b_ptr, y_ptr, rows, cols, m, n, sym, GELU)


_counters: dict[tuple[torch.device, int], torch.Tensor] = {}


def _counter(device: torch.device, tiles: int) -> torch.Tensor:
    """Zeroed int32 tile counters for the current stream (each launch leaves them zero); grown when needed."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    have = _counters.get(key)
    if have is None or have.numel() < tiles:
        have = _counters[key] = torch.zeros(max(tiles, 1024), dtype=torch.int32, device=device)
    return have


def tile_for(n: int, k: int) -> Tile:
    """The tile for an (n, k) weight: RDT_FEW_ROWS_TILE="64,4,128,4,3" overrides (bench/rdt_linear.py measures)."""
    if os.environ.get("RDT_FEW_ROWS_TILE"):
        return Tile(*(int(v) for v in os.environ["RDT_FEW_ROWS_TILE"].split(",")))
    return DEFAULT


def launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool, tile: Tile | None = None
           ) -> torch.Tensor:
    """x (..., K) with at most MAX_ROWS rows, weight (N, K), bias (N,) -> (..., N) in x's dtype. No checks."""
    k = x.shape[-1]
    rows = x.reshape(-1, k)
    m, n = rows.shape[0], weight.shape[0]
    t = tile or tile_for(n, k)
    per = -(-k // t.split)
    per = -(-per // t.block_k) * t.block_k
    split = -(-k // per)
    tiles = -(-n // t.block_n)
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    part = torch.empty((split, m, n) if split > 1 else (1,), dtype=torch.float32, device=x.device)
    count = _counter(x.device, tiles)
    _linear_kernel[(tiles, split)](rows, weight, bias, out, part, count, m, n, k, *rows.stride(), *weight.stride(),
                                   out.stride(0), K_PER=per, SPLIT=split, BLOCK_M=max(16, triton.next_power_of_2(m)),
                                   BLOCK_N=t.block_n, BLOCK_K=t.block_k, GELU=gelu, num_warps=t.warps,
                                   num_stages=t.stages)
    return out.view(*x.shape[:-1], n)


@torch.library.custom_op("robo_runner::few_rows_linear", mutates_args=())  # type: ignore[misc,untyped-decorator,unused-ignore]
def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool) -> torch.Tensor:
    """F.linear(x, weight, bias), then GELU (tanh) when `gelu`, for x of at most MAX_ROWS rows."""
    with torch.cuda.device(x.device):
        return launch(x, weight, bias, gelu)


@few_rows_linear.register_fake  # type: ignore[misc,untyped-decorator,unused-ignore]
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether few_rows_linear takes this product: CUDA, bf16/fp16 (all three alike), a bias, at most MAX_ROWS
    rows, no gradient wanted, Triton able to build (else F.linear)."""
    return (x.is_cuda and bias is not None and x.dtype in (torch.bfloat16, torch.float16)
            and weight.dtype == x.dtype and bias.dtype == x.dtype and x.numel() // max(1, x.shape[-1]) <= MAX_ROWS
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and kernels_unavailable() is None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """F.linear (then GELU tanh when `gelu`) through few_rows_linear where it applies."""
    if applies(x, weight, bias):
        return few_rows_linear(x, weight, bias, gelu)  # type: ignore[no-any-return]
    y = F.linear(x, weight, bias)
    return F.gelu(y, approximate="tanh") if gelu else y
