"""A residual add and the LayerNorm after it as one GPU kernel, for SigLIP's frozen encoder.

Each SigLIP layer adds to its residual stream twice, and a LayerNorm reads the sum right after: eager PyTorch runs
the add (read two activations, write one) and the LayerNorm (read it again, write one) as two kernels. On 96
images (a training batch of six images a sample) each activation is 161 MB, and the 54 add + LayerNorm pairs took
16.9 ms of the encoder's 130 ms of kernels on one H200 (LayerNorm at ~1.6 TB/s; docs/rdt.md, fourteenth session).
One Triton program a token row reads both inputs once, writes the sum (rounded to the activations' dtype, as the
eager add rounds it) and the normalised row computed from that rounded sum, with fp32 statistics.

`add_layer_norm` falls back to the two eager operations wherever the kernel does not apply: no CUDA or Triton,
no C compiler or Python headers (Triton builds its launcher with them at first use), gradients wanted, inside
torch.compile (inductor fuses the pair itself), a norm without affine weights, rows wider than MAX_COLS,
non-contiguous inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from policies.cuda_graph import kernels_unavailable
from policies.triton_import import tl, triton

MAX_COLS = 8192


if triton is not None:
    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _add_norm_kernel(x_ptr, h_ptr, w_ptr, b_ptr, s_ptr, y_ptr, n_cols, eps,  # type: ignore[no-untyped-def]
                         BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        offsets = row * n_cols + cols
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        s = (x + h).to(s_ptr.dtype.element_ty, fp_downcast_rounding="rtne")  # as the eager add rounds it
        tl.store(s_ptr + offsets, s, mask=mask)
        v = s.to(tl.float32)
        mean = tl.sum(v, axis=0) / n_cols
        centred = tl.where(mask, v - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / n_cols
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + offsets, (centred * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)


def fusable(x: torch.Tensor, h: torch.Tensor, norm: nn.LayerNorm) -> bool:
    """Whether add_layer_norm(x, h, norm) runs the one kernel (not the eager pair)."""
    return (triton is not None and x.is_cuda and x.shape == h.shape and x.dtype == h.dtype
            and x.is_contiguous() and h.is_contiguous() and norm.elementwise_affine and norm.bias is not None
            and len(norm.normalized_shape) == 1 and x.shape[-1] == norm.normalized_shape[0] <= MAX_COLS
            and not torch.compiler.is_compiling() and kernels_unavailable() is None
            and not (torch.is_grad_enabled() and (x.requires_grad or h.requires_grad or norm.weight.requires_grad)))


def add_layer_norm(x: torch.Tensor, h: torch.Tensor, norm: nn.LayerNorm, fused: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + h, norm(x + h)): one kernel when `fused` and it applies (`fusable`), else the two eager operations."""
    if not (fused and fusable(x, h, norm)):
        s = x + h
        return s, F.layer_norm(s, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    with torch.cuda.device(x.device):
        return launch(x, h, norm)


def launch(x: torch.Tensor, h: torch.Tensor, norm: nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel itself, on the current device (no checks: `fusable` says when it applies; under
    TRITON_INTERPRET=1 it also runs on CPU tensors, as the tests run it)."""
    n = x.shape[-1]
    s, y = torch.empty_like(x), torch.empty_like(x)
    _add_norm_kernel[(x.numel() // n,)](x, h, norm.weight, norm.bias, s, y, n, norm.eps,
                                        BLOCK=triton.next_power_of_2(n), num_warps=4 if n <= 2048 else 8)
    return s, y
