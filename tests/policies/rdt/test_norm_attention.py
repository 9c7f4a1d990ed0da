"""norm_attention.py: RDT's short attentions with their RMS norms in one kernel, and where act uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from policies.rdt import norm_attention as na
from policies.rdt.model import RdtBlock, RdtConfig, RdtRunner, use_norm_attention
from tests.policies.rdt.blocks import run_blocks


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qw: torch.Tensor, kw: torch.Tensor | None,
               mask: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Norms then SDPA in float64, (B, n, H, D) in and out."""
    qn = F.rms_norm(q.double(), (q.shape[-1],), qw.double(), eps)
    kn = F.rms_norm(k.double(), (k.shape[-1],), kw.double(), eps) if kw is not None else k.double()
    am = mask[:, None, None, :] if mask is not None else None
    out = F.scaled_dot_product_attention(qn.transpose(1, 2), kn.transpose(1, 2), v.double().transpose(1, 2),
                                         attn_mask=am)
    return out.transpose(1, 2)


def test_use_norm_attention_flags_every_blocks_attentions_and_cpu_keeps_the_eager_path() -> None:
    torch.manual_seed(0)
    m = RdtRunner(RdtConfig.tiny()).eval()
    x = torch.randn(1, 9, 64)
    lang, img = torch.randn(1, 5, 64), torch.randn(1, 12, 64)
    mask = torch.tensor([[True, True, False, True, True]])
    args = (x, torch.full((1,), 25.0), torch.full((1,), 500), lang, img)
    with torch.no_grad():
        ref = m.model(*args, lang_mask=mask)
        use_norm_attention(m.model, True)
        blocks = [b for b in m.model.blocks if isinstance(b, RdtBlock)]
        assert all(b.attn.fused_norms and b.cross_attn.fused_norms for b in blocks)
        assert not na.supported(x, 16)  # CPU: the norms and SDPA as before
        torch.testing.assert_close(m.model(*args, lang_mask=mask), ref, rtol=0, atol=0)
        use_norm_attention(m.model, False)
    assert not any(b.attn.fused_norms or b.cross_attn.fused_norms for b in blocks)


def test_precomputed_step_embeddings_give_the_same_step() -> None:
    torch.manual_seed(0)
    m = RdtRunner(RdtConfig.tiny()).eval()
    x, lang, img = torch.randn(2, 9, 64), torch.randn(2, 5, 64), torch.randn(2, 12, 64)
    t, freq = torch.full((1,), 300), torch.full((2,), 25.0)
    with torch.no_grad():
        emb = m.model.step_embeddings(t, freq, 2)
        assert emb.shape == (2, 2, 64)
        torch.testing.assert_close(m.model(x, freq, t, lang, img, emb=emb), m.model(x, freq, t, lang, img),
                                   rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize(("n", "length", "norm_k", "masked"), [(67, 67, True, False), (67, 32, False, True),
                                                             (67, 1024, False, True), (1, 7, False, False),
                                                             (128, 130, True, False)])
def test_kernel_matches_norms_then_sdpa_in_double_at_rdt_1b_width(n: int, length: int, norm_k: bool,
                                                                  masked: bool) -> None:
    torch.manual_seed(n + length)
    heads, d = 32, 64
    with torch.device("cuda"):
        if norm_k:  # self-attention: views of one (B, n, 3, H, D) product
            qkv = 3 * torch.randn(1, n, 3, heads, d, dtype=torch.bfloat16)
            q, k, v = qkv.unbind(2)
        else:  # cross-attention: keys and values as keys_values leaves them, (B, H, L, D) storage transposed
            q = 3 * torch.randn(1, n, heads, d, dtype=torch.bfloat16)
            k = torch.randn(1, heads, length, d, dtype=torch.bfloat16).transpose(1, 2)
            v = torch.randn(1, heads, length, d, dtype=torch.bfloat16).transpose(1, 2)
        qw = torch.rand(d, dtype=torch.bfloat16) + 0.5
        kw = torch.rand(d, dtype=torch.bfloat16) + 0.5 if norm_k else None
        mask = torch.rand(1, k.shape[1]) > 0.3 if masked else None
    if mask is not None:
        mask[0, 0] = True
    out = na.norm_attention(q, k, v, qw, kw, mask, 1e-6)
    ref = _reference(q, k, v, qw, kw, mask, 1e-6)
    assert out.shape == q.shape and out.is_contiguous() and bool(out.isfinite().all())
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_blocks_through_the_kernel_match_the_eager_norms_eager_compiled_and_graphed() -> None:
    """Two RDT-1B-wide blocks (a language one with a mask, an image one) at batch 1, bf16."""
    runs = run_blocks(use_norm_attention, 6 * 729, lang_mask_from=30)
    runs.assert_close()
    assert not torch.equal(runs.eager, runs.ref)  # the kernel ran
