"""RDT's short attentions at batch 1 with their RMS norms inside, as one Triton kernel (act's denoising steps).

Every RDT block attends twice over few keys: self-attention of its 67 tokens (queries and keys RMS-normalised per
head, `SelfAttention`), and, in the language blocks, cross-attention to the instruction's tokens (queries
normalised; keys normalised once a call by `CrossAttention.keys_values`; a key mask). Compiled, each is ~5 kernels a
block at batch 1 (the norms, a layout copy, cuDNN's attention and a memset before it), ~15 us a self-attention
in a graph with the gaps between them (nineteenth session, docs/rdt.md), for ~0.5 MFLOP of work.

Here one program per (batch, head) loads its queries (and, for self-attention, keys) and normalises them in fp32
(`x * rsqrt(mean(x^2) + eps) * w`, rounded to the input dtype, as F.rms_norm gives), walks the keys with an online
softmax in fp32 (bf16 products, as flash attention), drops masked keys, and writes (B, n, H, D), ready for the
output projection. Same arithmetic as norms then SDPA, to bf16 rounding.

`norm_attention` is a torch custom operator (opaque to torch.compile, capturable in CUDA graphs), inference only.
It runs where `supported` says so; elsewhere the callers keep their norms and SDPA. Under TRITON_INTERPRET=1 the
kernel also runs on fp32 CPU tensors.
"""

from __future__ import annotations

import torch

from policies.cuda_graph import kernels_unavailable
from policies.triton_import import tl, triton

MAX_HEAD = 128
MAX_QUERIES = 128
MAX_KEYS = 1024  # RDT's longest instruction; the image blocks' thousands of keys go to decode_attention

if triton is not None:
    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def rms_rows(x, w_ptr, dims, eps, D: tl.constexpr):  # type: ignore[no-untyped-def]
        """Each row of x RMS-normalised over its D values (fp32), times the weights at w_ptr, in x's dtype."""
        xf = x.to(tl.float32)
        scale = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=1) / D + eps)
        w = tl.load(w_ptr + dims, mask=dims < D, other=0.0).to(tl.float32)
        return (xf * scale[:, None] * w[None, :]).to(x.dtype)

    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def softmax_tile(q, k, v, kmask, m_i, l_i, acc, qk_scale):  # type: ignore[no-untyped-def]
        """One key tile of flash attention's online softmax (bf16 products, fp32 statistics in base 2): the running
        row maxima, sums and unnormalised outputs after the keys k and values v where kmask. A row whose keys so far
        are all masked keeps max -inf and sum 0 (no NaN)."""
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where(kmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        return m_new, l_i * alpha + tl.sum(p, axis=1), acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)

    @triton.jit  # type: ignore[misc,untyped-decorator,unused-ignore]
    def _norm_attention_kernel(q_ptr, k_ptr, v_ptr, qw_ptr, kw_ptr, mask_ptr, o_ptr,  # type: ignore[no-untyped-def]
                               sqb, sqn, sqh, sqd, skb, skl, skh, skd, svb, svl, svh, svd, smb, sml,
                               heads, n, length, eps, scale, TILES: tl.constexpr, NORM_K: tl.constexpr, MASK: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr):
        bh = tl.program_id(0)
        b, h = bh // heads, bh % heads
        rows = tl.arange(0, BLOCK_M)
        dims = tl.arange(0, BLOCK_D)
        dmask = dims < D
        q = tl.load(q_ptr + b * sqb + h * sqh + rows[:, None] * sqn + dims[None, :] * sqd,
                    mask=(rows[:, None] < n) & dmask[None, :], other=0.0)
        q = rms_rows(q, qw_ptr, dims, eps, D)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        qk_scale = scale * 1.4426950408889634  # exp(x) = exp2(x * log2(e))
        for tile in range(0, TILES):  # a constant count: RDT's lengths need at most 16 variants of the kernel
            keys = tile * BLOCK_N + tl.arange(0, BLOCK_N)
            kmask = keys < length
            if MASK:
                kmask = kmask & (tl.load(mask_ptr + b * smb + keys * sml, mask=keys < length, other=0) != 0)
            k = tl.load(k_ptr + b * skb + h * skh + keys[:, None] * skl + dims[None, :] * skd,
                        mask=(keys[:, None] < length) & dmask[None, :], other=0.0)
            if NORM_K:
                k = rms_rows(k, kw_ptr, dims, eps, D)
            v = tl.load(v_ptr + b * svb + h * svh + keys[:, None] * svl + dims[None, :] * svd,
                        mask=(keys[:, None] < length) & dmask[None, :], other=0.0)
            m_i, l_i, acc = softmax_tile(q, k, v, kmask, m_i, l_i, acc, qk_scale)
        offs = ((b * n + rows[:, None]) * heads + h) * D + dims[None, :]
        tl.store(o_ptr + offs, (acc / l_i[:, None]).to(o_ptr.dtype.element_ty),
                 mask=(rows[:, None] < n) & dmask[None, :])


def supported(x: torch.Tensor, head_dim: int) -> bool:
    """Whether norm_attention runs for tokens `x` (B, n, C): CUDA, bf16/fp16, at most MAX_QUERIES tokens, a head
    size up to MAX_HEAD, no gradient wanted, Triton able to build its kernel."""
    return (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and x.shape[1] <= MAX_QUERIES
            and head_dim <= MAX_HEAD and not (torch.is_grad_enabled() and x.requires_grad)
            and kernels_unavailable() is None)


def launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor | None,
           mask: torch.Tensor | None, eps: float) -> torch.Tensor:
    """softmax(norm(q) norm(k)^T / sqrt(D)) v for q (B, n, H, D), k and v (B, L, H, D) of any strides, the keys'
    norm only with `k_weight`, keys where `mask` (B, L) is False left out -> (B, n, H, D) contiguous. No checks
    (`supported` says where it applies; under TRITON_INTERPRET=1 it runs on CPU tensors)."""
    b, n, heads, d = q.shape
    length = k.shape[1]
    out = torch.empty((b, n, heads, d), dtype=q.dtype, device=q.device)
    m = mask if mask is not None else q.new_empty((1, 1), dtype=torch.bool)
    block_d = max(16, triton.next_power_of_2(d))
    _norm_attention_kernel[(b * heads,)](
        q, k, v, q_weight, k_weight if k_weight is not None else q_weight, m, out, *q.stride(), *k.stride(),
        *v.stride(), *m.stride(), heads, n, length, eps, 1.0 / d ** 0.5, TILES=-(-length // 64), NORM_K=k_weight is not None,
        MASK=mask is not None, BLOCK_M=max(16, triton.next_power_of_2(n)), BLOCK_N=64, BLOCK_D=block_d, D=d,
        num_warps=4, num_stages=2)
    return out


@torch.library.custom_op("robo_runner::norm_attention", mutates_args=())  # type: ignore[misc,untyped-decorator,unused-ignore]
def norm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor,
                   k_weight: torch.Tensor | None, mask: torch.Tensor | None, eps: float) -> torch.Tensor:
    """(B, n, H, D) queries over (B, L, H, D) keys and values -> (B, n, H, D): the queries (and with `k_weight` the
    keys) RMS-normalised per head, then SDPA with `mask` (B, L) True for the keys attended."""
    with torch.cuda.device(q.device):
        return launch(q, k, v, q_weight, k_weight, mask, eps)


@norm_attention.register_fake  # type: ignore[misc,untyped-decorator,unused-ignore]
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor | None,
      mask: torch.Tensor | None, eps: float) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)
