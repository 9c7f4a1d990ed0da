"""ZeRO-1 for RDT's fused engine on several GPUs (`shard_optimizer: true`): each process keeps 1/N of the fp32
master weights, of AdamW's moments and of the EMA.

The fused engine otherwise keeps all of them on every GPU (24 bytes a parameter, 27.4 GiB for RDT-1B) and averages
the gradients with DDP. Here, after the backward, the bf16 gradients are copied into one flat buffer and
reduce-scattered (summed in bf16, as DDP's bf16 all-reduce and DeepSpeed's bf16 ZeRO do): each process gets the
summed gradient of its slice, averages it in fp32, clips it by the global norm (an all-reduce of the slices' sums
of squares, then torch's clip_grad_norm_ factor), steps AdamW on its slice of the masters, updates its slice of the
EMA, and the new weights, rounded to bf16, are all-gathered back into every process's model through the same flat
buffer. The same bytes on the wire as an all-reduce; 6 + 22/N bytes a parameter on each GPU (bf16 weight, gradient
and flat buffer; the fp32 master, its gradient, the two moments, the EMA and a bf16 slice split N ways:
launch.fused_memory).

Checkpoints keep the unsharded layout (`MasterWeights.state_dict`'s per-parameter lists, the EMA by name), gathered
slice by slice onto the main process's host memory, so a sharded checkpoint resumes unsharded, on any GPU count, and
the other way round. `state_dict`, `gathered` and the EMA's `save` are collective: every process calls them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from policies.collectives import all_gather, pack, reduce_scatter, views_of
from policies.ema import ema_decay, load_averages, save_averages
from policies.rdt.fused import check_masters

#: Elements a process gathers at a time when a checkpoint is written (256 MB of fp32 a process on the GPU).
GATHER_CHUNK = 1 << 26


def segments(sizes: list[int], lo: int, hi: int) -> Iterator[tuple[int, int, int, int]]:
    """(parameter, start, end, position): the elements [start, end) of parameter i, flattened, are the slice's
    elements from `position` on, for the slice [lo, hi) of all parameters laid end to end."""
    offset = 0
    for i, n in enumerate(sizes):
        a, b = max(lo, offset), min(hi, offset + n)
        if a < b:
            yield i, a - offset, b - offset, a - lo
        offset += n


class ShardedMasters:
    """MasterWeights' interface (params, master, optimizer, step, zero_grad, state_dict, load_state_dict) with the
    fp32 state split across the processes of the default group. `params` must hold the same fp32 values on every
    process when this is made (the engine broadcasts them first)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], *, lr: float, betas: tuple[float, float],
                 weight_decay: float, eps: float, max_grad_norm: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.sizes = [p.numel() for p in self.params]
        self.n = sum(self.sizes)
        self.size = -(-self.n // self.world)  # a process's slice, the flat buffer padded to world x size
        self.lo, self.hi = self.rank * self.size, (self.rank + 1) * self.size
        device = self.params[0].device
        shard = torch.zeros(self.size, dtype=torch.float32, device=device)
        with torch.no_grad():
            for i, a, b, pos in segments(self.sizes, self.lo, self.hi):
                shard[pos:pos + b - a].copy_(self.params[i].detach().reshape(-1)[a:b])
        shard.grad = torch.zeros_like(shard)
        self.master = [shard]  # MasterWeights' list of masters: here the one slice (what the EMA follows)
        self.optimizer = torch.optim.AdamW(self.master, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps,
                                           fused=shard.is_cuda)
        self.max_grad_norm = max_grad_norm
        self.flat = torch.zeros(self.size * self.world, dtype=torch.bfloat16, device=device)
        self.views = views_of(self.flat, self.params)  # each parameter's place in flat: gradients in, weights out
        self.sliced = torch.zeros(self.size, dtype=torch.bfloat16, device=device)

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Average, clip and apply the gradients in the model's parameters on every process; returns the norm of
        the averaged gradient before clipping (as clip_grad_norm_)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        pack(grads, self.views, self.flat)
        self.flat[self.n:].zero_()  # the last slice's padding
        reduce_scatter(self.sliced, self.flat)  # summed over processes
        grad = self.master[0].grad
        assert grad is not None
        grad.copy_(self.sliced).div_(self.world)
        sq = grad.square().sum()
        dist.all_reduce(sq)
        norm = sq.sqrt()
        grad.mul_(torch.clamp(self.max_grad_norm / (norm + 1e-6), max=1.0))  # clip_grad_norm_'s factor
        self.optimizer.step()
        self.sliced.copy_(self.master[0])
        all_gather(self.flat, self.sliced)
        torch._foreach_copy_([p.data for p in self.params], self.views)
        return norm

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def gathered(self, piece: torch.Tensor) -> list[torch.Tensor] | None:
        """This process's slice of a flat fp32 quantity, completed across processes and cut per parameter, on the
        main process's host memory (None elsewhere). Collective; GATHER_CHUNK elements at a time on the GPU."""
        main = self.rank == 0
        full = torch.empty(self.size * self.world, dtype=piece.dtype) if main else None
        for c in range(0, self.size, GATHER_CHUNK):
            m = min(GATHER_CHUNK, self.size - c)
            buf = torch.empty(self.world * m, dtype=piece.dtype, device=piece.device)
            all_gather(buf, piece[c:c + m].contiguous())
            if full is not None:
                host = buf.cpu()
                for r in range(self.world):
                    full[r * self.size + c:r * self.size + c + m] = host[r * m:(r + 1) * m]
        return None if full is None else [v.clone() for v in views_of(full, self.params)]

    def state_dict(self) -> dict[str, Any]:
        """MasterWeights.state_dict's layout (per-parameter fp32 masters and AdamW state), on the main process;
        {} elsewhere. Collective."""
        # AdamW's state is empty before the first step, on every process alike: then there are no moments to gather
        state = self.optimizer.state.get(self.master[0], {})
        masters = self.gathered(self.master[0])
        avg, avg_sq = (self.gathered(state[k]) if state else None for k in ("exp_avg", "exp_avg_sq"))
        if masters is None:
            return {}
        per = {}
        if avg is not None and avg_sq is not None:
            step = torch.as_tensor(state["step"], dtype=torch.float32).reshape(()).cpu()
            per = {i: {"step": step.clone(), "exp_avg": avg[i], "exp_avg_sq": avg_sq[i]} for i in range(len(self.params))}
        return {"master": masters, "optimizer": {"state": per, "param_groups": self.groups()}}

    def groups(self) -> list[dict[str, Any]]:
        """The optimizer's param_groups as an unsharded one over every parameter has them."""
        group = {k: v for k, v in self.optimizer.state_dict()["param_groups"][0].items() if k != "params"}
        return [{**group, "params": list(range(len(self.params)))}]

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From MasterWeights.state_dict's layout (every process reads the whole file, takes its slice)."""
        saved = state["master"]
        check_masters(saved, self.params)
        shard = self.master[0]
        self._fill(shard, saved)
        per = state["optimizer"]["state"]
        if per:
            moments = {k: torch.zeros_like(shard) for k in ("exp_avg", "exp_avg_sq")}
            for k, buf in moments.items():
                self._fill(buf, [per[i][k] for i in range(len(self.params))])
            step = torch.as_tensor(per[0]["step"], dtype=torch.float32).reshape(())
            self.optimizer.state[shard] = {"step": step.to(shard.device if shard.is_cuda else "cpu"), **moments}
        self.optimizer.param_groups[0]["lr"] = state["optimizer"]["param_groups"][0]["lr"]
        torch._foreach_copy_([p.data for p in self.params], [s.to(p.device) for s, p in zip(saved, self.params,
                                                                                          strict=True)])

    def _fill(self, shard: torch.Tensor, per_param: list[torch.Tensor]) -> None:
        for i, a, b, pos in segments(self.sizes, self.lo, self.hi):
            shard[pos:pos + b - a].copy_(per_param[i].reshape(-1)[a:b])


class ShardedEma:
    """The fp32 EMA of the masters, a slice a process, with policies.ema.Ema's schedule and interface (steps,
    decay, update_from, save, load); saved by name as Ema saves it."""

    def __init__(self, names: list[str], masters: ShardedMasters) -> None:
        self.names, self.masters, self.steps = names, masters, 0
        self.params = [masters.master[0].detach().clone()]

    def decay(self) -> float:
        return ema_decay(self.steps)  # Ema's defaults, as the unsharded engine's Ema(model)

    def update_from(self, tensors: list[torch.Tensor]) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(self.params, tensors, 1.0 - self.decay())
        self.steps += 1

    def save(self, folder: Path) -> None:
        """The whole EMA as Ema saves it (the main process writes). Collective."""
        full = self.masters.gathered(self.params[0])
        if full is not None:
            save_averages(folder, dict(zip(self.names, full, strict=True)))

    def load(self, folder: Path, steps: int) -> None:
        state = load_averages(folder, self.names)
        with torch.no_grad():
            self.masters._fill(self.params[0], [state[k] for k in self.names])
        self.steps = steps
