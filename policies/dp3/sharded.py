"""ZeRO-1 for DP3 on several GPUs: each rank runs AdamW and the EMA on 1/world of the weights.

With the batch split across GPUs the forward and backward shrink, but DDP leaves every rank to update all 262M
fp32 weights and their EMA (~5 ms of an ~18 ms step on an H100) and to all-reduce 1 GB of gradients. Here the
gradients are copied into one flat buffer and reduce-scattered (summed); each rank holds the summed gradient of
its shard. The clipping norm comes from an all-reduce of each shard's sum of squares; fused AdamW updates the
shard, with the clip factor and the 1/world of the mean folded into its gradient divisor; the shard's EMA is one
lerp; an in-place all-gather gives every rank all the new weights. Same arithmetic as DDP + clipping + AdamW +
EMA; a reduce-scatter plus an all-gather instead of an all-reduce (the same bytes), 1/world of the update.

The flat buffer is cut into `chunks` equal chunks, and rank r owns the r-th 1/world of every chunk. The
communication then overlaps the copies and updates: the copy of chunk c+1's gradients runs while chunk c is
reduce-scattered, and chunk c+1's AdamW and EMA run while chunk c is all-gathered (every buffer is contiguous,
the all-gather in place). The clipping norm needs all the reduced gradients, so the two halves do not overlap.

The optimizer state lives in shards; `export_state` gathers it into the usual torch AdamW per-parameter state
(so checkpoints are the same as unsharded ones and resume on any GPU count) and `gather_ema` completes the EMA
weights for validation and checkpoints. Both are collective: every rank calls them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

# torch 2.13 renamed the tensor collectives (the old names warn); older versions have only the old ones.
_reduce_scatter = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
_all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)

CHUNK_ELEMENTS = 1 << 25  # 128 MB of fp32 a chunk: big enough for NCCL's bandwidth, small enough to overlap


def default_chunks(numel: int) -> int:
    """How many chunks to cut `numel` weights into (1 for small models, at most 8)."""
    return max(1, min(8, math.ceil(numel / CHUNK_ELEMENTS)))


class ShardedAdamW:
    def __init__(self, params: Sequence[torch.Tensor], flat: torch.Tensor, flat_ema: torch.Tensor | None,
                 opt: torch.optim.Optimizer, rank: int, world: int, grad_clip: float, chunks: int = 1) -> None:
        """params: the trained weights, views of `flat` (flatten_into_one, padded to a multiple of
        world * chunks); flat_ema: their EMA laid out the same way; opt: the torch AdamW whose hyper-parameters,
        learning rate (read every step) and, when resuming, state this takes over."""
        if flat.numel() % (world * chunks):
            msg = (f"the flat weight buffer ({flat.numel()}) must be padded to a multiple of the {world} ranks "
                   f"times the {chunks} chunks")
            raise ValueError(msg)
        self.params, self.flat, self.flat_ema, self.opt = list(params), flat, flat_ema, opt
        self.world, self.grad_clip, self.chunks = world, grad_clip, chunks
        self.n = sum(p.numel() for p in self.params)
        self.piece = flat.numel() // (world * chunks)  # one rank's part of one chunk
        self.rank = rank
        # flat as [chunk, rank, piece]: this rank owns [:, rank, :]; each chunk is contiguous
        self.grid = flat.view(chunks, world, self.piece)
        self.ema_grid = flat_ema.view(chunks, world, self.piece) if flat_ema is not None else None
        self.flat_grad = torch.zeros_like(flat)
        self.grad_chunks = self.flat_grad.view(chunks, world * self.piece)
        self.shard_grad = torch.zeros(chunks, self.piece, dtype=flat.dtype, device=flat.device)
        self._copy_plan = self._plan_copies()
        group = opt.param_groups[0]
        self.capturable = flat.is_cuda
        lr = group["lr"]
        self.lr = torch.tensor(float(lr), device=flat.device) if self.capturable else float(lr)
        self.pieces: list[torch.Tensor] = []  # leaves (the flat buffer does not require grad): AdamW's parameters
        self.inner: list[torch.optim.AdamW] = []
        for c in range(chunks):
            piece = self.grid[c, rank]
            piece.grad = self.shard_grad[c]
            self.pieces.append(piece)
            self.inner.append(torch.optim.AdamW([piece], lr=self.lr, betas=group["betas"], eps=group["eps"],
                                                weight_decay=group["weight_decay"], fused=True,
                                                capturable=self.capturable))
        self.divisor = torch.ones((), device=flat.device)
        self._import_state()

    def _plan_copies(self) -> list[list[tuple[int, int, int]]]:
        """For each chunk, the (parameter index, start, end) ranges of flattened gradients that fill it."""
        size = self.world * self.piece
        plan: list[list[tuple[int, int, int]]] = [[] for _ in range(self.chunks)]
        offset = 0
        for i, p in enumerate(self.params):
            start, end = offset, offset + p.numel()
            while start < end:
                c = start // size
                stop = min(end, (c + 1) * size)
                plan[c].append((i, start - offset, stop - offset))
                start = stop
            offset = end
        return plan

    def _copy_chunk(self, c: int, grads: list[torch.Tensor]) -> None:
        ranges = self._copy_plan[c]
        used = sum(end - start for _, start, end in ranges)
        if ranges:
            torch.cat([grads[i].reshape(-1)[start:end] for i, start, end in ranges], out=self.grad_chunks[c, :used])

    def _state_views(self, full: torch.Tensor) -> list[torch.Tensor]:
        return list(full.view(self.chunks, self.world, self.piece)[:, self.rank].unbind(0))

    def _import_state(self) -> None:
        """Take over the per-parameter AdamW state a resumed checkpoint put into `opt` (if any)."""
        states = [self.opt.state.get(p) for p in self.params]
        if not all(states):
            return
        full = {k: torch.zeros_like(self.flat) for k in ("exp_avg", "exp_avg_sq")}
        for k, buf in full.items():
            torch.cat([s[k].reshape(-1).to(buf) for s in states], out=buf[:self.n])  # type: ignore[index]
        step = float(states[0]["step"])  # type: ignore[index]
        avg, avg_sq = self._state_views(full["exp_avg"]), self._state_views(full["exp_avg_sq"])
        for c, (inner, piece) in enumerate(zip(self.inner, self.pieces, strict=True)):
            inner.state[piece] = {
                "step": torch.tensor(step, dtype=torch.float32, device=self.flat.device if self.capturable else "cpu"),
                "exp_avg": avg[c].clone(), "exp_avg_sq": avg_sq[c].clone()}

    @torch.no_grad()
    def step(self, keep: torch.Tensor | None) -> None:
        """Apply this step's gradients (in the parameters' .grad) on every rank; keep = 1 - EMA decay."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        # each chunk's reduce-scatter (NCCL's stream) overlaps the copy of the next chunk's gradients
        works = []
        for c in range(self.chunks):
            self._copy_chunk(c, grads)
            works.append(_reduce_scatter(self.shard_grad[c], self.grad_chunks[c], async_op=True))
        for w in works:
            w.wait()  # type: ignore[union-attr]
        sq = torch.linalg.vector_norm(self.shard_grad).square()
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
        # each chunk's all-gather overlaps the next chunk's AdamW and EMA
        works = []
        for c, inner in enumerate(self.inner):
            if not isinstance(self.lr, torch.Tensor):
                inner.param_groups[0]["lr"] = float(lr)
            inner.grad_scale = self.divisor  # type: ignore[attr-defined]
            try:
                inner.step()
            finally:
                del inner.grad_scale  # type: ignore[attr-defined]
            if self.ema_grid is not None and keep is not None:
                self.ema_grid[c, self.rank].lerp_(self.pieces[c], keep)
            works.append(_all_gather(self.grid[c].view(-1), self.pieces[c], async_op=True))
        for w in works:
            w.wait()  # type: ignore[union-attr]

    @torch.no_grad()
    def gather_ema(self) -> None:
        """Complete the EMA weights on every rank (each rank keeps only its shard up to date). Collective."""
        if self.ema_grid is not None:
            for c in range(self.chunks):
                _all_gather(self.ema_grid[c].view(-1), self.ema_grid[c, self.rank])

    @torch.no_grad()
    def export_state(self) -> None:
        """Write the gathered AdamW state into `opt` per parameter, as an unsharded run has it. Collective."""
        states = [inner.state.get(piece) for inner, piece in zip(self.inner, self.pieces, strict=True)]
        if not all(states):
            return
        full = {}
        for k in ("exp_avg", "exp_avg_sq"):
            full[k] = torch.empty_like(self.flat)
            grid = full[k].view(self.chunks, self.world * self.piece)
            for c, st in enumerate(states):
                _all_gather(grid[c], st[k])  # type: ignore[index]
        step = float(states[0]["step"])  # type: ignore[index]
        offset = 0
        fused_or_capturable = bool(self.opt.defaults.get("fused") or self.opt.defaults.get("capturable"))
        for p in self.params:
            n = p.numel()
            self.opt.state[p] = {
                "step": torch.tensor(step, dtype=torch.float32, device=p.device if fused_or_capturable else "cpu"),
                "exp_avg": full["exp_avg"][offset:offset + n].view_as(p).clone(),
                "exp_avg_sq": full["exp_avg_sq"][offset:offset + n].view_as(p).clone()}
            offset += n
