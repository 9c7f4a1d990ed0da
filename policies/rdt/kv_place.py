"""Writing an image slot's kept keys and values in one pass, for `act`'s kept image keys/values.

RdtPolicy keeps every image block's keys and values across calls (Rdt.image_kv_slots). A slot's keys are the
RMS-normalised per head products of its condition tokens, its values the plain products. Two cases write a slot:

- **A new frame.** Its products are written straight into the kept pre-norm keys and the kept values; one pass
  here normalises the keys into the kept keys (eager PyTorch: a copy to contiguous, the norm over 64-element rows,
  ~30 us a block at 1,458 tokens on an H200, and a copy into the kept buffer).
- **A frame that moved one history step older.** Its condition tokens are the adapted image tokens plus the
  position embedding of its slot, and the products are linear: keys before the norm and values at the older slot
  are those at the newer slot plus W (p_older - p_newer), a per-slot constant of each block (`Rdt.slot_deltas`).
  One pass reads the newer slot's pre-norm keys and values and the constants, and writes the older slot's pre-norm
  keys, keys and values; no product is computed again. With three cameras and new frames at every call that halves
  the image products (2,187 of 4,374 tokens).

Both run as one Triton kernel on CUDA bf16/fp16 tensors (fp32 arithmetic, one rounding at each store) and as eager
PyTorch elsewhere. Under TRITON_INTERPRET=1 the kernel also runs on fp32 CPU tensors.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from policies.cuda_graph import kernels_unavailable
from policies.triton_import import tl, triton

ROWS = 32  # head rows (of D values) a program

if triton is not None:
    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _place_kernel(pre_src, dk, v_src, dv, pre_dst, k_dst, v_dst, w_ptr, rows, eps,  # type: ignore[no-untyped-def]
                      MOVE: tl.constexpr, WRITE_PRE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                      D: tl.constexpr):
        r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        dims = tl.arange(0, BLOCK_D)
        mask = (r[:, None] < rows) & (dims[None, :] < D)
        offs = r[:, None] * D + dims[None, :]
        pre = tl.load(pre_src + offs, mask=mask, other=0.0).to(tl.float32)
        if MOVE:
            pre += tl.load(dk + offs, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_src + offs, mask=mask, other=0.0).to(tl.float32)
            v += tl.load(dv + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(v_dst + offs, v.to(v_dst.dtype.element_ty), mask=mask)
            if WRITE_PRE:
                tl.store(pre_dst + offs, pre.to(pre_dst.dtype.element_ty), mask=mask)
        rstd = 1.0 / tl.sqrt(tl.sum(pre * pre, axis=1) / D + eps)
        w = tl.load(w_ptr + dims, mask=dims < D, other=0.0).to(tl.float32)
        tl.store(k_dst + offs, (pre * rstd[:, None] * w[None, :]).to(k_dst.dtype.element_ty), mask=mask)


def fused(t: torch.Tensor) -> bool:
    """Whether `normalise` and `move` run the Triton kernel for tensors like `t` (else eager PyTorch)."""
    return (triton is not None and t.is_cuda and t.dtype in (torch.bfloat16, torch.float16)
            and kernels_unavailable() is None)


def normalise(pre: torch.Tensor, k: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """k = rms_norm(pre) * weight over the last dimension, for contiguous (..., D) tensors of one shape."""
    if fused(pre):
        _launch(pre, None, None, None, None, k, None, weight, eps)
    else:
        k.copy_(F.rms_norm(pre, (pre.shape[-1],), weight, eps))


def move(pre_src: torch.Tensor, v_src: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, pre_dst: torch.Tensor | None,
         k_dst: torch.Tensor, v_dst: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """pre = pre_src + dk (kept in pre_dst unless None); k_dst = rms_norm(pre) * weight; v_dst = v_src + dv.
    Contiguous (..., D) tensors of one shape; the sources must not overlap the destinations."""
    if fused(pre_src):
        _launch(pre_src, dk, v_src, dv, pre_dst, k_dst, v_dst, weight, eps)
        return
    pre = pre_src + dk
    if pre_dst is not None:
        pre_dst.copy_(pre)
    k_dst.copy_(F.rms_norm(pre, (pre.shape[-1],), weight, eps))
    v_dst.copy_(v_src + dv)


def _launch(pre_src: torch.Tensor, dk: torch.Tensor | None, v_src: torch.Tensor | None, dv: torch.Tensor | None,
            pre_dst: torch.Tensor | None, k_dst: torch.Tensor, v_dst: torch.Tensor | None, weight: torch.Tensor,
            eps: float) -> None:
    """The kernel on the tensors' device (no checks; under TRITON_INTERPRET=1 it also runs on CPU tensors)."""
    d = pre_src.shape[-1]
    rows = pre_src.numel() // d
    move_ = dk is not None
    with torch.cuda.device(pre_src.device) if pre_src.is_cuda else contextlib.nullcontext():
        _place_kernel[(-(-rows // ROWS),)](
            pre_src, dk if move_ else pre_src, v_src if move_ else pre_src, dv if move_ else pre_src,
            pre_dst if pre_dst is not None else k_dst, k_dst, v_dst if move_ else k_dst, weight, rows, eps,
            MOVE=move_, WRITE_PRE=pre_dst is not None, ROWS=ROWS, BLOCK_D=max(16, triton.next_power_of_2(d)), D=d,
            num_warps=4)
