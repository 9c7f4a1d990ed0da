"""fc1 and its tanh GELU as one cuBLASLt call (`torch._addmm_activation`, GELU in the product's epilogue), as an
operator torch.compile keeps whole: inductor would otherwise split it into its product and a GELU kernel of its
own, one more kernel per block and solver step in act's sampling graph. Inference only (no autograd formula)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.library.custom_op("robo_runner::linear_gelu", mutates_args=())  # type: ignore[misc,untyped-decorator,unused-ignore]
def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(x @ weight.T + bias) for (..., in) rows and an (out, in) weight. On CUDA cuBLASLt's GELU epilogue
    (the tanh form, rounded once to the output dtype); elsewhere F.linear then F.gelu(approximate="tanh")."""
    if x.is_cuda:
        flat = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
        return flat.reshape(*x.shape[:-1], weight.shape[0])
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


@linear_gelu.register_fake  # type: ignore[misc,untyped-decorator,unused-ignore]
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))
