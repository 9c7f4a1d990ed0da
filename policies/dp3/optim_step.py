"""One DP3 optimizer step: eager (any device) or captured whole as a CUDA graph (one GPU); the EMA of the weights."""

from __future__ import annotations

import torch

from policies.dp3.model import DP3
from policies.ema import ema_decay


class Ema:
    """EMA of the weights with upstream's warm-up schedule (inv_gamma 1, power 0.75, max 0.9999)."""

    def __init__(self, model: torch.nn.Module, power: float = 0.75, max_value: float = 0.9999) -> None:
        import copy

        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.max_value, self.step_count = power, max_value, 0

    def decay(self) -> float:
        return ema_decay(self.step_count, self.power, max_value=self.max_value)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.decay()
        pairs = list(zip(self.model.parameters(), model.parameters(), strict=True))
        learned = [(e, p) for e, p in pairs if p.requires_grad and p.numel()]
        if learned:
            ema_ps: list[torch.Tensor] = [e for e, _ in learned]
            ps = [p.detach() for _, p in learned]
            torch._foreach_mul_(ema_ps, d)  # one fused pass over all weights instead of one kernel per tensor
            torch._foreach_add_(ema_ps, ps, alpha=1 - d)
        for e, p in pairs:
            if not p.requires_grad:
                e.copy_(p)
        self.step_count += 1


def train_step(loss_fn: torch.nn.Module, model: DP3, opt: torch.optim.Optimizer,
               sched: torch.optim.lr_scheduler.LRScheduler, ema: Ema | None,
               batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], generator: torch.Generator,
               grad_clip: float) -> torch.Tensor:
    """One optimizer step on a batch of windows: bf16 autocast on a GPU, clipping, schedule, EMA.

    `loss_fn` is the model itself, or its DistributedDataParallel wrapper (which averages gradients across GPUs)."""
    on_gpu = batch[0].is_cuda
    with torch.autocast("cuda" if on_gpu else "cpu", dtype=torch.bfloat16, enabled=on_gpu):
        loss: torch.Tensor = loss_fn(*batch, generator=generator)
    opt.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    if ema is not None:
        ema.update(model)
    return loss


class GraphedStep:
    """train_step as one CUDA graph: forward, backward, clipping, fused AdamW and EMA replayed with one launch.

    DP3's U-Net runs ~2,000 small kernels a step; launching them from Python, not the GPU, bounds eager training.
    The noise and diffusion steps are drawn outside the graph from the same generator, in the same order, as
    the eager step; the learning rate and EMA decay live in device tensors the graph reads. The first
    `warmup` steps run eagerly on a side stream (lazy CUDA initialisation must not be captured)."""

    def __init__(self, model: DP3, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                 ema: Ema | None, grad_clip: float, warmup: int = 3) -> None:
        self.model, self.opt, self.sched, self.ema, self.grad_clip = model, opt, sched, ema, grad_clip
        self.warmup = warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: list[torch.Tensor] = []
        self.loss = torch.zeros((), device=next(model.parameters()).device)
        dev = self.loss.device
        self.decay, self.keep = torch.zeros((), device=dev), torch.zeros((), device=dev)
        self.stream = torch.cuda.Stream(device=dev)  # type: ignore[no-untyped-call]

    def _body(self, pc: torch.Tensor, pos: torch.Tensor, act: torch.Tensor, noise: torch.Tensor, steps: torch.Tensor
              ) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            loss = self.model.loss_given_noise(pc, pos, act, noise, steps)
        self.opt.zero_grad(set_to_none=False)
        loss.backward()  # type: ignore[no-untyped-call]
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        if self.ema is not None:
            pairs = [(e, p) for e, p in zip(self.ema.model.parameters(), self.model.parameters(), strict=True)
                     if p.requires_grad and p.numel()]
            ema_ps: list[torch.Tensor] = [e for e, _ in pairs]
            torch._foreach_mul_(ema_ps, self.decay)
            torch._foreach_add_(ema_ps, torch._foreach_mul([p.detach() for _, p in pairs], self.keep))
        self.loss.copy_(loss.detach())

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        noise, steps = self.model.draw_noise(batch[2], generator)
        if self.ema is not None:
            d = self.ema.decay()
            self.decay.fill_(d)
            self.keep.fill_(1 - d)
        inputs = [*batch, noise, steps]
        if self.calls < self.warmup:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self._body(*inputs)
            torch.cuda.current_stream().wait_stream(self.stream)
        else:
            if self.graph is None:
                self.static = [t.clone() for t in inputs]
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self._body(*self.static)
            for dst, src in zip(self.static, inputs, strict=True):
                dst.copy_(src)
            self.graph.replay()
        self.calls += 1
        self.sched.step()
        if self.ema is not None:
            self.ema.step_count += 1
        return self.loss
