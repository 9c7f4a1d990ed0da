"""Attention of a few queries over many keys as two Triton kernels (flash-decoding), for `act`'s image blocks.

At batch 1 RDT's 67 tokens (step, frequency, state, 64 actions) attend to 4,374 image tokens in each of the 14 image
blocks, five solver steps a call. One flash attention gives 32 heads x 1-2 query tiles of work, each walking every
key (48 us a block on an H200); split_key_attention (policies.rdt.model) runs each image's 729 keys as a batch entry
of aten's flash kernel and weighs the six results by their log-sum-exps: 26 us of flash kernels plus ~5 us of
combination kernels a block (eleventh and sixteenth sessions, docs/rdt.md), where reading the 36 MB of keys and
values takes ~7.5 us.

Here one program a (head, query tile, key split) walks its split of the keys with an online softmax in fp32 and
writes its normalised partial output and log-sum-exp; a second kernel weighs the splits' outputs by their
log-sum-exps and writes the result in (B, n, H, D) layout, ready for the output projection. The splits are not
tied to the images: `splits` is chosen for the GPU's width. Same arithmetic as flash attention (bf16 products,
fp32 statistics), so the output matches SDPA's to bf16 rounding.

`decode_attention` is a torch custom operator (opaque to torch.compile, capturable in CUDA graphs), without a
backward (inference). It runs where `supported` says so: a CUDA device, bf16 or fp16, head size <= 256, Triton
installed and able to build its launcher; elsewhere callers keep split_key_attention. Under TRITON_INTERPRET=1 the
kernels also run on fp32 CPU tensors (Triton 3.6's interpreter multiplies bf16 operands as integers).
"""

from __future__ import annotations

import os

import torch

from policies.cuda_graph import kernels_unavailable
from policies.triton_import import tl, triton

MAX_HEAD = 256
TILE = (64, 4, 3)  # keys a step, warps, pipeline stages: the best of 21 measured (docs/rdt.md, sixteenth session)


if triton is not None:
    from policies.rdt.norm_attention import rms_rows, softmax_tile

    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _partial_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, qw_ptr,  # type: ignore[no-untyped-def]
                        sqb, sqh, sqn, sqd, skb, skh, skl, skd, svb, svh, svl, svd,
                        heads, n, length, n_splits, scale, eps, SPLIT: tl.constexpr, Q_NORM: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr):
        split, bh, mt = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        b, h = bh // heads, bh % heads
        rows = mt * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        dmask = dims < D
        q = tl.load(q_ptr + b * sqb + h * sqh + rows[:, None] * sqn + dims[None, :] * sqd,
                    mask=(rows[:, None] < n) & dmask[None, :], other=0.0)
        if Q_NORM:  # the queries' RMS norm here, not in a kernel of its own
            q = rms_rows(q, qw_ptr, dims, eps, D)
        start = split * SPLIT
        end = start + SPLIT  # the last split is cut at `length` by the mask
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        qk_scale = scale * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
        for lo in range(0, SPLIT, BLOCK_N):
            keys = start + lo + tl.arange(0, BLOCK_N)
            kmask = (keys < end) & (keys < length)
            k = tl.load(k_ptr + b * skb + h * skh + keys[:, None] * skl + dims[None, :] * skd,
                        mask=kmask[:, None] & dmask[None, :], other=0.0)
            v = tl.load(v_ptr + b * svb + h * svh + keys[:, None] * svl + dims[None, :] * svd,
                        mask=kmask[:, None] & dmask[None, :], other=0.0)
            m_i, l_i, acc = softmax_tile(q, k, v, kmask, m_i, l_i, acc, qk_scale)
        row_ok = rows < n
        base = (bh * n_splits + split) * n
        tl.store(o_ptr + (base + rows[:, None]) * BLOCK_D + dims[None, :], acc / l_i[:, None], mask=row_ok[:, None])
        tl.store(lse_ptr + base + rows, m_i + tl.log2(l_i), mask=row_ok)  # base 2

    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _combine_kernel(o_ptr, lse_ptr, out_ptr, heads, n,  # type: ignore[no-untyped-def]
                        N_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr):
        bh, mt = tl.program_id(0), tl.program_id(1)
        b, h = bh // heads, bh % heads
        rows = mt * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        row_ok = rows < n
        m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        w = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        for split in range(0, N_SPLITS):
            base = (bh * N_SPLITS + split) * n
            lse = tl.load(lse_ptr + base + rows, mask=row_ok, other=0.0)
            o = tl.load(o_ptr + (base + rows[:, None]) * BLOCK_D + dims[None, :], mask=row_ok[:, None], other=0.0)
            m_new = tl.maximum(m, lse)
            alpha = tl.exp2(m - m_new)
            e = tl.exp2(lse - m_new)
            w = w * alpha + e
            acc = acc * alpha[:, None] + o * e[:, None]
            m = m_new
        # out is (B, n, H, D) contiguous
        offs = ((b * n + rows[:, None]) * heads + h) * D + dims[None, :]
        tl.store(out_ptr + offs, (acc / w[:, None]).to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (dims[None, :] < D))


def supported(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether decode_attention runs here: a CUDA device, bf16 or fp16, a head size up to MAX_HEAD, and Triton
    able to build its kernels (else callers keep their fallback). It has no backward: inference only."""
    return (device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and head_dim <= MAX_HEAD
            and kernels_unavailable() is None)


def splits_for(device: torch.device, batch: int, heads: int, queries: int) -> int:
    """How many parts decode_attention cuts the keys into: about two programs a multiprocessor, so that all of them
    read keys at once (RDT_DECODE_SPLITS overrides; docs/rdt.md, sixteenth session, has the measurements)."""
    if os.environ.get("RDT_DECODE_SPLITS"):  # 0: off (split_key_attention instead)
        return max(0, int(os.environ["RDT_DECODE_SPLITS"]))
    width = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    return max(1, round(2 * width / (batch * heads * -(-queries // 128))))


def split_length(length: int, splits: int, block: int = 64) -> int:
    """Keys per split: `length` cut into at most `splits` parts, each a multiple of `block` (no split is empty)."""
    per = -(-length // max(1, splits))
    return max(block, -(-per // block) * block)


def tile() -> tuple[int, int, int]:
    """The partial kernel's keys a step, warps and pipeline stages (RDT_DECODE_TILE="64,4,2" overrides)."""
    if os.environ.get("RDT_DECODE_TILE"):
        n, w, s = (int(v) for v in os.environ["RDT_DECODE_TILE"].split(","))
        return n, w, s
    return TILE


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, splits: int, q_weight: torch.Tensor | None = None,
           eps: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q (B, H, n, D), k and v (B, H, L, D) of any strides -> (B, n, H, D)
    contiguous; with `q_weight`, q RMS-normalised per head first (weights `q_weight`, `eps`). No checks
    (`supported` says where it applies; under TRITON_INTERPRET=1 it runs on CPU tensors)."""
    b, heads, n, d = q.shape
    length = k.shape[2]
    block_n, warps, stages = tile()
    per = split_length(length, splits, block_n)
    n_splits = -(-length // per)
    block_d = max(16, triton.next_power_of_2(d))
    block_m = min(128, max(16, triton.next_power_of_2(n)))
    m_tiles = -(-n // block_m)
    partial = torch.empty((b * heads * n_splits * n, block_d), dtype=torch.float32, device=q.device)
    lse = torch.empty((b * heads * n_splits * n,), dtype=torch.float32, device=q.device)
    out = torch.empty((b, n, heads, d), dtype=q.dtype, device=q.device)
    _partial_kernel[(n_splits, b * heads, m_tiles)](
        q, k, v, partial, lse, q_weight if q_weight is not None else q, *q.stride(), *k.stride(), *v.stride(), heads,
        n, length, n_splits, 1.0 / d ** 0.5, eps, SPLIT=per, Q_NORM=q_weight is not None, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_D=block_d, D=d, num_warps=warps, num_stages=stages)
    _combine_kernel[(b * heads, m_tiles)](partial, lse, out, heads, n, N_SPLITS=n_splits, BLOCK_M=block_m, BLOCK_D=block_d,
                                          D=d, num_warps=4)
    return out


@torch.library.custom_op("robo_runner::decode_attention", mutates_args=())  # type: ignore[misc,untyped-decorator,unused-ignore]
def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, splits: int,
                     q_weight: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """(B, H, n, D) queries over (B, H, L, D) keys and values -> (B, n, H, D): SDPA without a mask, its keys walked
    in `splits` parts at once; with `q_weight`, of the queries RMS-normalised per head (weights, `eps`)."""
    with torch.cuda.device(q.device):
        return launch(q, k, v, splits, q_weight, eps)


@decode_attention.register_fake  # type: ignore[misc,untyped-decorator,unused-ignore]
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, splits: int, q_weight: torch.Tensor | None = None,
      eps: float = 0.0) -> torch.Tensor:
    b, heads, n, d = q.shape
    return q.new_empty((b, n, heads, d))
