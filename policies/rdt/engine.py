"""How one RDT optimizer step runs: two engines with one interface, chosen by the job's `engine` option.

* `fused` (the default on GPUs in bf16, `engine: auto`): the model in bf16 with fp32 master weights, a fused
  AdamW and a multi-tensor EMA (policies/rdt/fused.py), the model compiled. DeepSpeed's bf16 arithmetic
  without its bookkeeping. On several GPUs the model is wrapped in DDP (bf16 gradients averaged in buckets while
  the backward runs, as ZeRO-2 reduces them in bf16) and every GPU keeps the whole optimizer state, so a checkpoint
  is the same on any GPU count and resumes on any other. Its checkpoint keeps the model where DeepSpeed writes it
  (`pytorch_model/mp_rank_00_model_states.pt`, key `module`), so everything that reads weights reads both.
* `accelerate`: accelerate with DeepSpeed ZeRO (`zero_stage` > 0) or DDP, as upstream trains: `auto` picks it on
  GPUs too small for the fused engine's whole optimizer state and a micro-batch (launch.fits_fused).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from policies import checkpoint_io, process_group
from policies.ema import Ema
from policies.rdt import zero_convert
from policies.rdt.config import RdtTrain
from policies.rdt.fused import MasterWeights
from policies.rdt.launch import deepspeed_config
from policies.rdt.sharded import ShardedEma, ShardedMasters

#: What the fused engine adds to accelerate's save_state in a checkpoint folder.
MODEL_FILE = "pytorch_model/mp_rank_00_model_states.pt"
FUSED_OPTIMIZER = "fused_optimizer.pt"

LossFn = Callable[[Any, dict[str, torch.Tensor], torch.Generator], torch.Tensor]


class ResumeError(Exception):
    """A checkpoint that cannot be restored in full: training stops instead of continuing from weights only."""


def make_accelerator(o: RdtTrain, fused: bool = False) -> tuple[Any, str, dict[str, Any] | None]:
    """(accelerator, precision, DeepSpeed config or None): bf16/fp16 only on GPUs; DeepSpeed when zero_stage > 0
    and the engine is accelerate's. The fused engine keeps accelerate for devices, RNG states and reductions only."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    process_group.prepare((process_group.DEEPSPEED_COMM,))  # Accelerator() joins the group
    precision = o.mixed_precision if torch.cuda.is_available() else "no"
    if fused:
        return Accelerator(mixed_precision="no"), precision, None
    ds_config = deepspeed_config(o, precision) if o.zero_stage > 0 else None
    plugin = DeepSpeedPlugin(hf_ds_config=ds_config) if ds_config else None
    acc = Accelerator(gradient_accumulation_steps=o.gradient_accumulation_steps, mixed_precision=precision,
                      deepspeed_plugin=plugin)
    return acc, precision, ds_config


def every_process(acc: Any, flag: bool) -> list[bool]:
    """Each process's `flag`, by rank, on every process (a collective: every process calls it)."""
    if acc.num_processes == 1:
        return [flag]
    return [bool(x) for x in acc.gather(torch.tensor([int(flag)], device=acc.device)).tolist()]


def check_same_engine(acc: Any, fused: bool) -> None:
    """Every process must train with one engine; each machine picks it from its own GPUs' memory
    (launch.fits_fused), so machines with GPUs of different sizes could disagree. Raises ValueError, on every
    process, naming the ranks."""
    picked = every_process(acc, fused)
    if len(set(picked)) > 1:
        ranks = {name: [r for r, f in enumerate(picked) if f == flag] for name, flag in (("fused", True),
                                                                                         ("accelerate", False))}
        msg = (f"the processes picked different engines (fused on ranks {ranks['fused']}, accelerate + DeepSpeed on "
               f"ranks {ranks['accelerate']}): the machines' GPUs differ in memory (docs/rdt.md, Engines); set "
               "steps.train.engine to fused or accelerate, or run on machines with GPUs of one size")
        raise ValueError(msg)


def adamw_args(o: RdtTrain) -> dict[str, Any]:
    return {"lr": o.learning_rate, "betas": tuple(o.adam_betas), "weight_decay": o.weight_decay, "eps": 1e-8}


class AccelerateEngine:
    """accelerate's prepare/accumulate/backward (DeepSpeed ZeRO when configured); the EMA from the unwrapped model."""

    name = "accelerate"

    def __init__(self, acc: Any, model: torch.nn.Module, o: RdtTrain, deepspeed: bool) -> None:
        self.acc, self.deepspeed, self.max_grad_norm = acc, deepspeed, o.max_grad_norm
        self.ema = Ema(model)
        opt = torch.optim.AdamW(model.parameters(), **adamw_args(o))
        self.model, self.optimizer = acc.prepare(model, opt)
        self.ema.to(acc.device)

    @property
    def module(self) -> torch.nn.Module:
        return self.acc.unwrap_model(self.model)  # type: ignore[no-any-return]

    def step(self, micro: Iterable[tuple[dict[str, torch.Tensor], torch.Generator]], loss_fn: LossFn) -> torch.Tensor:
        for b, gen in micro:
            with self.acc.accumulate(self.model):
                loss = loss_fn(self.model, b, gen)
                self.acc.backward(loss)
                if self.acc.sync_gradients and not self.deepspeed:
                    self.acc.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
        self.ema.update(self.module)
        return loss

    def save(self, folder: Path) -> None:
        self.acc.save_state(str(folder))
        if self.acc.is_main_process:
            self.ema.save(folder / "ema")

    def load(self, folder: Path) -> str | None:
        if (folder / FUSED_OPTIMIZER).is_file():
            msg = (f"{folder} was written by the fused engine, whose optimizer state accelerate cannot read: "
                   "resume it with engine: auto or fused (on any GPU count), or start a new lineage from its weights "
                   f"(weights.rdt={folder / MODEL_FILE} with `runner train JOB`)")
            raise ResumeError(msg)
        self.acc.load_state(str(folder))
        return None

    def close(self) -> None:
        """At the end of training: destroy DeepSpeed's engine, whose gradient hooks would keep the model, and with it
        the process groups its parameters name, alive until the interpreter shuts down (policies/process_group.py)."""
        self.acc.free_memory()


class FusedEngine:
    """bf16 model + fp32 masters + fused AdamW + multi-tensor EMA; DDP over several processes; compiled when asked."""

    name = "fused"

    def __init__(self, acc: Any, model: torch.nn.Module, o: RdtTrain, compile: bool) -> None:
        self.acc, self.accum, self.compiled = acc, o.gradient_accumulation_steps, compile
        self.sharded = acc.num_processes > 1 and o.shard_optimizer
        names = [n for n, _ in model.named_parameters()]
        if list(model.state_dict()) != names:
            msg = "the fused engine needs a model whose state is its parameters, in order (no buffers)"
            raise ValueError(msg)
        # The masters copy the fp32 weights before the model is rounded to bf16: pretrained weights keep their
        # precision in the optimizer (DeepSpeed builds its masters from the rounded bf16 weights).
        model.to(acc.device)
        self.master: MasterWeights | ShardedMasters
        self.ema: Ema | ShardedEma
        if self.sharded:
            with torch.no_grad():  # every process slices process 0's weights
                for p in model.parameters():
                    torch.distributed.broadcast(p.data, 0)
            self.master = ShardedMasters(model.parameters(), max_grad_norm=o.max_grad_norm, **adamw_args(o))
            self.ema = ShardedEma(names, self.master)
        else:
            self.ema = Ema(model).to(acc.device)
            self.master = MasterWeights(model.parameters(), max_grad_norm=o.max_grad_norm, **adamw_args(o))
        self.model = model.to(torch.bfloat16)
        self.optimizer = self.master.optimizer
        self.wrapped: Any = self.model
        if acc.num_processes > 1 and not self.sharded:
            self._replicate()
            if compile:
                # One graph for the forward and one for the backward, DDP's all-reduce after it, instead of a graph
                # split at every gradient bucket so the reduction overlaps: on two H200s the split graphs cost
                # ~46 ms a step against one process; an all-reduce of the 2.4 GB of bf16 gradients should take
                # ~7 ms (docs/rdt.md).
                torch._dynamo.config.optimize_ddp = False
        self.forward: Any = torch.compile(self.wrapped) if compile else self.wrapped

    def _replicate(self) -> None:
        """Every process starts from process 0's masters (and so weights and EMA), then DDP averages gradients."""
        from torch.nn.parallel import DistributedDataParallel

        assert isinstance(self.ema, Ema)
        with torch.no_grad():
            for m in self.master.master:
                torch.distributed.broadcast(m, 0)
            torch._foreach_copy_([p.data for p in self.master.params], self.master.master)
            torch._foreach_copy_(list(self.ema.params.values()), self.master.master)
        cuda = self.acc.device.type == "cuda"
        self.wrapped = DistributedDataParallel(self.model, device_ids=[self.acc.device] if cuda else None,
                                               broadcast_buffers=False, gradient_as_bucket_view=True)

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def step(self, micro: Iterable[tuple[dict[str, torch.Tensor], torch.Generator]], loss_fn: LossFn) -> torch.Tensor:
        batches = list(micro)
        for i, (b, gen) in enumerate(batches):
            with self._accumulating(i < len(batches) - 1):
                loss = loss_fn(self.forward, b, gen)
                (loss / self.accum).backward()  # type: ignore[no-untyped-call]
        self.master.step()
        self.master.zero_grad()
        self.ema.update_from(self.master.master)
        return loss

    def _accumulating(self, more: bool) -> Any:
        """DDP's no_sync for a micro-batch that another follows (uncompiled: a compiled DDP module reduces at
        every backward, which costs time, not correctness)."""
        if more and self.wrapped is not self.model and not self.compiled:
            return self.wrapped.no_sync()
        return contextlib.nullcontext()

    def save(self, folder: Path) -> None:
        """The checkpoint and the EMA; sharded, every process gathers its slices to the main process first."""
        self.acc.save_state(str(folder))  # RNG states (one file a process) and the LR scheduler
        state = self.master.state_dict()
        if self.sharded or self.acc.is_main_process:  # sharded, a collective in which the main process writes
            self.ema.save(folder / "ema")
        if self.acc.is_main_process:  # the same on every process
            (folder / MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)
            checkpoint_io.write({"module": self.model.state_dict()}, folder / MODEL_FILE)
            checkpoint_io.write(state, folder / FUSED_OPTIMIZER)

    def load(self, folder: Path) -> str | None:
        """Restore from a fused checkpoint, or from a DeepSpeed ZeRO one (converted; the note says so)."""
        note = None
        if (folder / FUSED_OPTIMIZER).is_file():
            # sharded: each process reads the whole state into host memory and keeps its slice on the GPU
            state = checkpoint_io.load(folder / FUSED_OPTIMIZER, "cpu" if self.sharded else self.acc.device)
        elif zero_convert.shards(folder):
            state, note = self._from_zero(folder)
        else:
            msg = (f"{folder} was written by accelerate without DeepSpeed (zero_stage: 0), not the fused engine: resume "
                   "it with engine: accelerate (and the GPU count it was written with), or start a new lineage "
                   f"from its weights (weights.rdt={folder / MODEL_FILE} with `runner train JOB`)")
            raise ResumeError(msg)
        self.acc.load_state(str(folder))  # a process the checkpoint has no RNG file for keeps its seeded state
        # The fp32 masters define the bf16 weights (MODEL_FILE is their rounding, kept for readers of weights).
        self.master.load_state_dict(state)
        return note

    def close(self) -> None:
        """At the end of training: nothing outlives this engine (its DDP module goes with it)."""

    def _from_zero(self, folder: Path) -> tuple[dict[str, Any], str]:
        """DeepSpeed's per-process ZeRO state as the fused engine's: converted once by process 0 into a folder
        beside the checkpoint (removed after), read by every process."""
        acc, saved_by = self.acc, len(zero_convert.shards(folder))
        universal = folder.parent / f".{folder.name}.universal"
        why = ""
        if acc.is_main_process:
            try:
                zero_convert.to_universal(folder, universal)
            except zero_convert.ConvertError as e:
                why = str(e)
        try:
            _all_or_none(acc, not why, f"cannot convert {folder}'s DeepSpeed ZeRO state for the fused engine: {why}")
            state: dict[str, Any] = {}
            try:
                names = [n for n, _ in self.model.named_parameters()]
                like = {"param_groups": self.master.groups()} if isinstance(self.master, ShardedMasters) else (
                    self.master.optimizer.state_dict())
                state = zero_convert.fused_state(universal, names, list(self.master.params), like,
                                                 "cpu" if self.sharded else acc.device)
            except (zero_convert.ConvertError, checkpoint_io.CheckpointError, KeyError) as e:
                why = f"{type(e).__name__}: {e}"
            # also the point where every process has read the files
            _all_or_none(acc, not why, f"cannot read {folder}'s DeepSpeed ZeRO state for the fused engine: {why}")
        finally:
            if acc.is_main_process:
                shutil.rmtree(universal, ignore_errors=True)
        return state, (f"converted DeepSpeed ZeRO's optimizer state, saved by {saved_by} process(es), for the fused "
                       f"engine on {acc.num_processes}")


def _all_or_none(acc: Any, ok: bool, message: str) -> None:
    """Every process goes on, or every process raises ResumeError (one process's failure would otherwise leave
    the others waiting at the next collective)."""
    if not all(every_process(acc, ok)):
        raise ResumeError(message if not ok else "another process could not restore the checkpoint (its error is above)")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
