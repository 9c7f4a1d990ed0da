"""Packing gradients into the flat buffer the sharded optimizers reduce-scatter."""

from __future__ import annotations

import torch

from policies.collectives import pack, views_of


def test_pack_casts_every_tensor_into_its_view_in_either_path() -> None:
    torch.manual_seed(0)
    grads = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 2)]
    flat = torch.zeros(40, dtype=torch.bfloat16)
    views = views_of(flat, grads)
    assert [v.shape for v in views] == [g.shape for g in grads]
    pack(grads, views, flat)  # one dtype, contiguous: the multi-tensor copy
    expected = torch.cat([g.reshape(-1) for g in grads]).to(torch.bfloat16)
    assert torch.equal(flat[:25], expected) and not flat[25:].any()
    mixed = [grads[0].t(), grads[1].double(), grads[2]]  # a transposed and a float64 tensor: the concatenation
    flat.zero_()
    pack(mixed, views_of(flat, mixed), flat)
    assert torch.equal(flat[:25], torch.cat([t.reshape(-1).float() for t in mixed]).to(torch.bfloat16))
