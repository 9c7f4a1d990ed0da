"""One-GPU fine-tuning without DeepSpeed, with DeepSpeed's bf16 arithmetic: the model's weights and gradients in
bf16, fp32 master weights, the gradients copied to fp32 and clipped by their global norm, AdamW on the masters in
one fused kernel, the masters rounded back into the model. The EMA follows the fp32 masters
(policies/rdt/engine.py Ema.update_from).

DeepSpeed ZeRO-2 on a single GPU does the same arithmetic through bucketing, contiguous gradient buffers and
partition bookkeeping that buy nothing without a second rank; here each stage is one multi-tensor kernel.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class MasterWeights:
    """bf16 parameters with fp32 masters and a fused AdamW over them (`torch.optim.AdamW(fused=True)` on CUDA)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float, betas: tuple[float, float],
                 weight_decay: float, eps: float, max_grad_norm: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.master = [p.detach().float().clone() for p in self.params]
        self.grads = [torch.zeros_like(m) for m in self.master]
        for m, g in zip(self.master, self.grads, strict=True):
            m.grad = g
        cuda = bool(self.master) and self.master[0].is_cuda
        self.optimizer = torch.optim.AdamW(self.master, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps,
                                           fused=cuda)
        self.max_grad_norm = max_grad_norm

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Apply the gradients in the model's parameters; returns the gradient norm before clipping."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        torch._foreach_copy_(self.grads, grads)
        norm = torch.nn.utils.clip_grad_norm_(self.master, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        torch._foreach_copy_([p.data for p in self.params], self.master)
        return norm

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"master": [m.detach() for m in self.master], "optimizer": self.optimizer.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["master"]
        check_masters(saved, self.params)
        torch._foreach_copy_(self.master, [s.to(self.master[0].device) for s in saved])
        self.optimizer.load_state_dict(state["optimizer"])
        torch._foreach_copy_([p.data for p in self.params], self.master)


def check_masters(saved: list[torch.Tensor], params: list[torch.nn.Parameter]) -> None:
    """Raise ValueError unless a checkpoint's per-parameter fp32 masters match the parameters one for one."""
    if len(saved) != len(params) or any(s.shape != p.shape for s, p in zip(saved, params, strict=True)):
        msg = "the saved fp32 master weights do not match the model's parameters"
        raise ValueError(msg)
