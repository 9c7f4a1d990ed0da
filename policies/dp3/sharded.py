"""ZeRO-1 for DP3 on several GPUs: each rank runs AdamW and the EMA on 1/world of the weights.

With the batch split across GPUs the forward and backward shrink, but DDP leaves every rank to update all 262M
fp32 weights and their EMA (~5 ms of an ~18 ms step on an H100) and to all-reduce 1 GB of gradients. Here the
gradients, copied into one flat buffer, are reduce-scattered (summed): each rank holds the summed gradient of its
shard. The clipping norm comes from an all-reduce of each shard's sum of squares; fused AdamW updates the shard,
with the clip factor and the 1/world of the mean folded into its gradient divisor; an in-place all-gather gives
every rank all the new weights while the shard's EMA (one lerp) is updated beside it. Same arithmetic as DDP +
clipping + AdamW + EMA, a reduce-scatter plus an all-gather instead of an all-reduce (the same bytes), 1/world of
the update's traffic. (Cutting the buffer into chunks to overlap each chunk's communication with the next one's
copy and update was measured slower on two H100s: NCCL and the bandwidth-bound kernels slow each other down.)

With `gather_dtype=torch.bfloat16` the updated weights travel in bf16 (half the all-gather's bytes): each rank rounds
its shard into a bf16 buffer, the buffer is all-gathered, and every rank copies the other ranks' parts into its fp32
weights, keeping its own shard (the master copy AdamW updates) in fp32. That is exact for a model that reads every
trained weight through a bf16 cast, as DP3 does under autocast (the products' casts, BfLayerNorm and BfGroupNorm):
round(round(w)) == round(w), so every rank computes with the same bf16 values as with an fp32 all-gather
(tests/policies/dp3/test_sharded.py checks equal losses). The other ranks' parts are then bf16 values in fp32
storage: `gather_weights` (collective) all-gathers the exact fp32 weights before validation and checkpoints.

With `reduce_dtype=torch.bfloat16` the gradients travel and are summed in bf16 (half the reduce-scatter's bytes),
as DeepSpeed's bf16 mode and FSDP's mixed precision do: under bf16 autocast the linear and convolution weight
gradients are bf16 values already, so this rounds only their sum (and the fp32 norm gradients) to bf16; the
clipping norm, AdamW and the EMA stay fp32.

The optimizer state lives in shards; `export_state` gathers it into the usual torch AdamW per-parameter state
(so checkpoints are the same as unsharded ones and resume on any GPU count) and `gather_ema` completes the EMA
weights for validation and checkpoints. Both are collective: every rank calls them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from policies.collectives import all_gather, pack, reduce_scatter, views_of


class ShardedAdamW:
    def __init__(self, params: Sequence[torch.Tensor], flat: torch.Tensor, flat_ema: torch.Tensor | None,
                 opt: torch.optim.Optimizer, rank: int, world: int, grad_clip: float,
                 reduce_dtype: torch.dtype | None = None, gather_dtype: torch.dtype | None = None) -> None:
        """params: the trained weights, views of `flat` (flatten_into_one, padded to a multiple of world);
        flat_ema: their EMA laid out the same way; opt: the torch AdamW whose hyper-parameters, learning rate
        (read every step) and, when resuming, state this takes over; reduce_dtype / gather_dtype: the dtype the
        gradients are summed in / the weights are gathered in (None: the weights' own)."""
        if flat.numel() % world:
            msg = f"the flat weight buffer ({flat.numel()}) must be padded to a multiple of the {world} ranks"
            raise ValueError(msg)
        self.params, self.flat, self.flat_ema, self.opt = list(params), flat, flat_ema, opt
        self.world, self.grad_clip = world, grad_clip
        self.n = sum(p.numel() for p in self.params)
        size = flat.numel() // world
        self.lo, self.hi = rank * size, (rank + 1) * size
        self.shard = flat[self.lo:self.hi]  # a leaf (the flat buffer does not require grad): AdamW's parameter
        self.flat_grad = torch.zeros_like(flat, dtype=reduce_dtype or flat.dtype)
        self.grad_views = views_of(self.flat_grad, self.params)  # each parameter's place in flat_grad (`pack`)
        self.shard.grad = torch.zeros_like(self.shard)
        # what the reduce-scatter writes: the shard's gradient itself, or a low-precision copy of it
        self.shard_reduced = (self.shard.grad if self.flat_grad.dtype == flat.dtype
                              else torch.zeros_like(self.shard, dtype=self.flat_grad.dtype))
        group = opt.param_groups[0]
        self.capturable = flat.is_cuda
        lr = group["lr"]
        self.lr = torch.tensor(float(lr), device=flat.device) if self.capturable else float(lr)
        self.inner = torch.optim.AdamW([self.shard], lr=self.lr, betas=group["betas"], eps=group["eps"],
                                       weight_decay=group["weight_decay"], fused=True, capturable=self.capturable)
        self.divisor = torch.ones((), device=flat.device)
        # the bf16 copy of the weights the all-gather fills (None: it gathers the fp32 weights themselves)
        self.flat_low = (torch.zeros_like(flat, dtype=gather_dtype)
                         if gather_dtype is not None and gather_dtype != flat.dtype else None)
        self._import_state()

    def _import_state(self) -> None:
        """Take over the per-parameter AdamW state a resumed checkpoint put into `opt` (if any)."""
        states = [self.opt.state.get(p) for p in self.params]
        if not all(states):
            return
        full = {k: torch.zeros_like(self.flat) for k in ("exp_avg", "exp_avg_sq")}
        for k, buf in full.items():
            torch.cat([s[k].reshape(-1).to(buf) for s in states], out=buf[:self.n])  # type: ignore[index]
        step = float(states[0]["step"])  # type: ignore[index]
        self.inner.state[self.shard] = {
            "step": torch.tensor(step, dtype=torch.float32, device=self.flat.device if self.capturable else "cpu"),
            "exp_avg": full["exp_avg"][self.lo:self.hi].clone(),
            "exp_avg_sq": full["exp_avg_sq"][self.lo:self.hi].clone()}

    @torch.no_grad()
    def step(self, keep: torch.Tensor | None) -> None:
        """Apply this step's gradients (in the parameters' .grad) on every rank; keep = 1 - EMA decay."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        pack(grads, self.grad_views, self.flat_grad)
        reduce_scatter(self.shard_reduced, self.flat_grad)  # summed over ranks
        if self.shard_reduced is not self.shard.grad:
            self.shard.grad.copy_(self.shard_reduced)  # type: ignore[union-attr]
        sq = torch.linalg.vector_norm(self.shard_reduced, dtype=torch.float32).square()  # bf16: half the reads
        dist.all_reduce(sq)
        # clip_grad_norm_ on the mean gradient: factor min(1, clip / (norm + 1e-6)); AdamW divides by world / factor
        if self.grad_clip > 0:
            norm = sq.sqrt() / self.world
            self.divisor.copy_(torch.clamp((norm + 1e-6) / self.grad_clip, min=1.0) * self.world)
        else:
            self.divisor.fill_(self.world)
        lr = self.opt.param_groups[0]["lr"]  # the scheduler's value for this step
        if isinstance(self.lr, torch.Tensor):
            self.lr.copy_(lr) if isinstance(lr, torch.Tensor) else self.lr.fill_(lr)
        else:
            self.inner.param_groups[0]["lr"] = float(lr)
        self.inner.grad_scale = self.divisor  # type: ignore[attr-defined]
        try:
            self.inner.step()
        finally:
            del self.inner.grad_scale  # type: ignore[attr-defined]
        # the all-gather (NCCL's stream) runs while this stream averages the shard into the EMA
        if self.flat_low is None:
            work = all_gather(self.flat, self.shard, async_op=True)
        else:
            own = self.flat_low[self.lo:self.hi]
            own.copy_(self.shard)
            work = all_gather(self.flat_low, own, async_op=True)
        if self.flat_ema is not None and keep is not None:
            self.flat_ema[self.lo:self.hi].lerp_(self.shard, keep)
        work.wait()
        if self.flat_low is not None:  # the other ranks' parts; this rank's shard stays the fp32 master
            self.flat[:self.lo].copy_(self.flat_low[:self.lo])
            self.flat[self.hi:].copy_(self.flat_low[self.hi:])

    @torch.no_grad()
    def gather_weights(self) -> None:
        """Make every rank's weights the exact fp32 ones (after bf16 all-gathers they are bf16 values outside
        this rank's shard): before validation and checkpoints. Collective; nothing to do with fp32 gathers."""
        if self.flat_low is not None:
            all_gather(self.flat, self.shard)

    @torch.no_grad()
    def gather_ema(self) -> None:
        """Complete the EMA weights on every rank (each rank keeps only its shard up to date). Collective."""
        if self.flat_ema is not None:
            all_gather(self.flat_ema, self.flat_ema[self.lo:self.hi])

    @torch.no_grad()
    def export_state(self) -> None:
        """Write the gathered AdamW state into `opt` per parameter, as an unsharded run has it. Collective."""
        state = self.inner.state.get(self.shard)
        if not state:
            return
        full = {}
        for k in ("exp_avg", "exp_avg_sq"):
            full[k] = torch.empty_like(self.flat)
            all_gather(full[k], state[k])
        views = {k: views_of(buf, self.params) for k, buf in full.items()}
        fused_or_capturable = bool(self.opt.defaults.get("fused") or self.opt.defaults.get("capturable"))
        for i, p in enumerate(self.params):
            self.opt.state[p] = {
                "step": torch.tensor(float(state["step"]), dtype=torch.float32,
                                     device=p.device if fused_or_capturable else "cpu"),
                **{k: v[i].clone() for k, v in views.items()}}

    def drop_exported(self) -> None:
        """Free what export_state wrote into `opt` (2 full fp32 copies of the weights) once it has been saved."""
        for p in self.params:
            self.opt.state.pop(p, None)
