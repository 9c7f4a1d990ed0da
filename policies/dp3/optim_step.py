"""One DP3 optimizer step: eager (any device) or captured whole as a CUDA graph (one GPU); the EMA of the weights."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

from policies.cuda_graph import compile_failed, compile_unavailable
from policies.dp3.model import DP3
from policies.dp3.sharded import ShardedAdamW
from policies.ema import Ema


def train_step(loss_fn: torch.nn.Module, model: DP3, opt: torch.optim.Optimizer,
               sched: torch.optim.lr_scheduler.LRScheduler, ema: Ema | None,
               batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], generator: torch.Generator,
               grad_clip: float) -> torch.Tensor:
    """One optimizer step on a batch of windows: bf16 autocast on a GPU, clipping, schedule, EMA.

    `loss_fn` is the model itself, or its DistributedDataParallel wrapper (which averages gradients across GPUs)."""
    on_gpu = batch[0].is_cuda
    noise, steps = model.draw_noise(batch[2], generator)  # the draws compute_loss makes, in its order
    with torch.autocast("cuda" if on_gpu else "cpu", dtype=torch.bfloat16, enabled=on_gpu):
        loss: torch.Tensor = loss_fn(*batch, noise, steps)
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
    `warmup` steps run eagerly on a side stream (lazy CUDA initialisation must not be captured).

    Same arithmetic as train_step, fewer passes over the 262M fp32 weights (each pass costs ~0.35 ms a GB):
    gradients are not zeroed and accumulated but written once (set_to_none inside the graph); clipping does not
    rescale them but hands the clip factor to fused AdamW as its gradient divisor; the trained weights and their
    EMA live in two flat buffers, so the EMA update is one lerp. With `compile`, the loss (forward and backward)
    is compiled by torch.compile first (fusing the norms, activations and layout copies), then captured."""

    def __init__(self, model: DP3, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                 ema: Ema | None, grad_clip: float, warmup: int = 3, compile: bool = False,
                 say: Callable[[str], None] | None = None, ranks: tuple[int, int] = (0, 1),
                 shard: bool = False, reduce_dtype: torch.dtype | None = None,
                 gather_dtype: torch.dtype | None = None) -> None:
        """ranks: (rank, world) of a multi-GPU run; shard: with world > 1, ZeRO-1 (policies.dp3.sharded)
        instead of DistributedDataParallel; reduce_dtype / gather_dtype: ZeRO-1's gradient reduction and weight
        all-gather dtypes (the weights' if None)."""
        self.model, self.opt, self.sched, self.ema, self.grad_clip = model, opt, sched, ema, grad_clip
        self.warmup = warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: list[torch.Tensor] = []
        # An epoch's short last batch: its own graph per batch shape, of the uncompiled step (no recompile).
        self.short_graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, list[torch.Tensor]]] = {}
        self.short_seen: dict[tuple[int, ...], int] = {}
        self.say = say or (lambda _m: None)
        dev = next(model.parameters()).device
        self.loss = torch.zeros((), device=dev)
        self.keep = torch.zeros((), device=dev)  # 1 - EMA decay
        self.stream = torch.cuda.Stream(device=dev)  # type: ignore[no-untyped-call]
        self.params = [p for p in model.parameters() if p.requires_grad and p.numel()]
        rank, world = ranks
        self.world = world
        shard = shard and world > 1
        self.flat: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (weights, their EMA)
        if ema is not None or shard:
            learned = [e for e, p in zip(ema.model.parameters(), model.parameters(), strict=True)
                       if p.requires_grad and p.numel()] if ema is not None else []
            pad = world if shard else 1
            self.flat = flatten_into_one(self.params, pad), flatten_into_one(learned, pad) if learned else None
        self.sharded: ShardedAdamW | None = None
        # What computes the loss: the model, or (several GPUs, not sharded) its DistributedDataParallel wrapper,
        # whose gradient all-reduces are captured into the graph with the rest.
        self.module: torch.nn.Module = model
        if shard and self.flat is not None:
            self.sharded = ShardedAdamW(self.params, self.flat[0], self.flat[1], opt, rank, world, grad_clip,
                                        reduce_dtype, gather_dtype)
        elif world > 1:
            # Built on the stream that runs the warm-up steps and the capture (its gradient hooks must live on the
            # stream of the backward); after >= 11 eager iterations DDP has rebuilt its buckets and stopped
            # sampling timings, so the captured iteration makes no host syncs. The compiled loss calls DDP, whose
            # forward dynamo compiles with its DDPOptimizer (one graph per gradient bucket, so an all-reduce can
            # start before the whole backward has run).
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self.module = torch.nn.parallel.DistributedDataParallel(
                    model, device_ids=[dev.index], broadcast_buffers=False, gradient_as_bucket_view=True)
            torch.cuda.current_stream().wait_stream(self.stream)
            self.warmup = max(warmup, 11)
        self.loss_fn: Callable[..., torch.Tensor] = self._eager_loss
        reason = compile_unavailable() if compile else None
        if reason:
            self.say(f"train: not compiling the training step: {reason}")
        self.compiled = compile and reason is None
        if self.compiled:
            self.loss_fn = torch.compile(self._eager_loss, dynamic=False)

    def _eager_loss(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            loss: torch.Tensor = self.module(*inputs)
            return loss

    def _body(self, loss_fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> None:
        loss = loss_fn(*inputs)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if self.sharded is not None:
            self.sharded.step(self.keep if self.ema is not None else None)
            self.loss.copy_(loss.detach())
            return
        if self.grad_clip > 0:
            # clip_grad_norm_'s factor min(1, clip / (norm + 1e-6)), applied by AdamW as a divisor
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
            self.opt.grad_scale = torch.clamp((norm + 1e-6) / self.grad_clip, min=1.0)  # type: ignore[attr-defined]
        try:
            self.opt.step()
        finally:
            if hasattr(self.opt, "grad_scale"):
                del self.opt.grad_scale
        if self.flat is not None and self.flat[1] is not None:
            self.flat[1].lerp_(self.flat[0], self.keep)
        self.loss.copy_(loss.detach())

    def _eager(self, loss_fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> None:
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self._body(loss_fn, *inputs)
        torch.cuda.current_stream().wait_stream(self.stream)

    def gather(self, optimizer: bool = True) -> None:
        """Before validation or a checkpoint, on every rank: with ZeRO-1, complete the exact fp32 weights and the EMA
        weights and (optimizer) put the optimizer state, per parameter, into the torch optimizer (what checkpoints
        save). Else nothing."""
        if self.sharded is not None:
            self.sharded.gather_weights()
            self.sharded.gather_ema()
            if optimizer:
                self.sharded.export_state()

    def release(self) -> None:
        """After a checkpoint is written: ZeRO-1 drops the gathered optimizer state (it keeps its shards)."""
        if self.sharded is not None:
            self.sharded.drop_exported()

    def close(self) -> None:
        """Free the graph and the DDP wrapper. Before the process group is destroyed: NCCL cannot tear down a
        communicator whose all-reduces a live graph still holds (the process hangs at exit)."""
        torch.cuda.synchronize(self.loss.device)
        for graph, _ in self.short_graphs.values():
            graph.reset()
        self.short_graphs.clear()
        if self.graph is not None:
            self.graph.reset()
            self.graph = None
        self.module = self.model

    def _short(self, inputs: list[torch.Tensor]) -> None:
        """An epoch's short last batch, uncompiled (its shape never recompiles the full step): eagerly the first
        time a shape is seen (its warm-up, after the full graph exists), then from a CUDA graph of its own, so the
        epoch boundary no longer launches the step's ~2,000 kernels from Python. Every rank reaches this at the same
        step (its rows may differ by one); the graph's collectives are the full graph's."""
        key = tuple(inputs[0].shape)
        if self.graph is None or self.short_seen.get(key, 0) < 1:
            self.short_seen[key] = self.short_seen.get(key, 0) + 1
            self._eager(self._eager_loss, inputs)
            return
        if key not in self.short_graphs:
            static = [t.clone() for t in inputs]
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self._body(self._eager_loss, *static)
            self.short_graphs[key] = graph, static
        graph, static = self.short_graphs[key]
        for dst, src in zip(static, inputs, strict=True):
            dst.copy_(src)
        graph.replay()

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], generator: torch.Generator,
                 full: bool = True) -> torch.Tensor:
        """One optimizer step. full=False (an epoch's short last batch): uncompiled, from its own graph once seen
        (`_short`); it must be the same choice on every rank."""
        noise, steps = self.model.draw_noise(batch[2], generator)
        if self.ema is not None:
            self.keep.fill_(1 - self.ema.decay())
        inputs = [*batch, noise, steps]
        if not full:
            self._short(inputs)
        elif self.calls < self.warmup:
            if self.compiled and self.calls == 0:
                self.say("train: compiling the training step (torch.compile): about two minutes on one GPU, four "
                         "through DDP (turn off with steps.train.compile: false)")
            if self.compiled and self.calls == 0 and self.world == 1:  # a retry is no collective: one GPU only
                try:
                    self._eager(self.loss_fn, inputs)
                except Exception as exc:  # noqa: BLE001  # a compiler failure must not end the training
                    self.say("train: " + compile_failed(exc, "training without it"))
                    self.loss_fn, self.compiled = self._eager_loss, False
                    self.opt.zero_grad(set_to_none=True)
                    self._eager(self.loss_fn, inputs)
            else:
                self._eager(self.loss_fn, inputs)
            self.calls += 1
        else:
            if self.graph is None:
                self.static = [t.clone() for t in inputs]
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, stream=self.stream):
                    self._body(self.loss_fn, *self.static)
            for dst, src in zip(self.static, inputs, strict=True):
                dst.copy_(src)
            self.graph.replay()
            self.calls += 1
        if self.sharded is None:
            self.sched.step()
        else:
            with warnings.catch_warnings():
                # ZeRO-1 steps its own optimizer over the shard; the scheduler's is never called (lr copied over)
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.sched.step()
        if self.ema is not None:
            self.ema.steps += 1
        return self.loss


def flatten_into_one(tensors: Sequence[torch.Tensor], pad_to: int = 1) -> torch.Tensor:
    """Move same-dtype tensors into one contiguous buffer and make each a view of it (values kept): one kernel can
    then update all of them. Parameters stay the same objects, so optimizers and state dicts are unaffected. The
    buffer is zero-padded to a multiple of `pad_to` (equal shards for several ranks)."""
    if len({(t.dtype, t.device) for t in tensors}) != 1:
        msg = "flatten_into_one needs tensors of one dtype on one device"
        raise ValueError(msg)
    n = sum(t.numel() for t in tensors)
    flat = torch.zeros(-(-n // pad_to) * pad_to, dtype=tensors[0].dtype, device=tensors[0].device)
    torch.cat([t.detach().reshape(-1) for t in tensors], out=flat[:n])
    offset = 0
    for t in tensors:
        n = t.numel()
        t.data = flat[offset:offset + n].view_as(t)
        offset += n
    return flat
