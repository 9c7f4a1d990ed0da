"""DP3 training: AdamW + cosine warm-up, EMA, bf16 autocast on GPUs, gradient clipping, GPU-resident windows,
checkpoints that resume exactly (same weights as an uninterrupted run on CPU), stop-and-save on signals."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies import interconnect
from policies.checkpoint_io import CheckpointError
from policies.cuda_graph import compile_unavailable
from policies.dp3 import checkpoints, distributed
from policies.dp3.config import Dp3Train
from policies.dp3.data import DataShapeError, ReplayData, WindowSampler, val_mask, window_table, worker_batches
from policies.dp3.model import DP3, Dp3Config
from policies.dp3.optim_step import GraphedStep, train_step
from policies.ema import Ema
from policies.metrics import Metrics, SmoothRate, progress
from policies.signals import StopFlag
from policies.training import TrainResult, checkpoint_line, compile_note, lr_scheduler, tree_bytes


def build_model(cfg: Dp3Config, data: ReplayData, train_rows: torch.Tensor, device: torch.device) -> DP3:
    model = DP3(cfg)
    # The min-max normaliser is fitted on the frames of the training episodes (upstream: the training split).
    frames = torch.unique(train_rows.reshape(-1)).to(data.state.device)
    model.normalizer.fit({"action": data.action[frames], "agent_pos": data.state[frames],
                          "point_cloud": data.point_cloud[frames]})
    return model.to(device)


def make_optimizer(model: DP3, s: Dp3Train, device: torch.device, graphed: bool = False) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if graphed:  # a captured step reads the learning rate from a device tensor the scheduler fills
        return torch.optim.AdamW(params, lr=torch.tensor(s.lr, device=device), betas=s.betas, eps=1e-8,
                                 weight_decay=s.weight_decay, fused=True, capturable=True)
    return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, eps=1e-8, weight_decay=s.weight_decay,
                             fused=device.type == "cuda")


def _rng_state(gens: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every generator's state as tensors and plain values, so the checkpoint loads weights-only."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            **{k: g.get_state() for k, g in gens.items()}}


def _set_rng(state: dict[str, Any], gens: dict[str, torch.Generator]) -> None:
    """Restore every generator; the states are CPU byte tensors whatever device the checkpoint was mapped to."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        # A checkpoint of a run that saw more (or fewer) GPUs: restore the devices both have (resume on another count).
        for i, t in enumerate(list(state["cuda"])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(t.cpu(), i)
    for k, g in gens.items():
        g.set_state(state[k].cpu())


def train(cfg: Dp3Config, data: ReplayData, s: Dp3Train, *, ckpt_dir: Path, run_dir: Path, device: torch.device,
          resume: bool, extra: dict[str, Any] | None = None, say: Callable[[str], None] = print,
          stop: StopFlag | None = None, start: Path | None = None) -> TrainResult:
    """Train (or continue training) and return where it stopped. Under torchrun, one process a GPU."""
    ranks, device = distributed.init(device)
    run = _Run(cfg, data, s, ranks, device, ckpt_dir, extra, say if ranks.main else _quiet, stop or StopFlag())
    restored = run.restore(start) if resume else False
    if ranks.rank and not restored:  # each rank draws its own noise
        run.gens["noise"].manual_seed(s.seed + 1 + 1000 * ranks.rank)
    run.metrics = Metrics(run_dir, s.logger if ranks.main else "none",
                          {"model": asdict(cfg), "train": s.settings(), **(extra or {})}, enabled=ranks.main,
                          lineage=ckpt_dir, title=f"DP3 {(extra or {}).get('job', '')}: lineage {ckpt_dir.name}")
    run.announce()
    try:
        interconnect.report(device, run.say)
        if run.graphed and s.compile and compile_unavailable() is None:
            run.say(compile_note("the first steps compile the training step and capture it in a CUDA graph"))
        return run.loop()
    finally:
        run.metrics.close()
        if run.stepper is not None:
            run.stepper.close()
        distributed.finish(ranks)


class _Run:
    """One training process's state: data, model, optimizer, generators and where the loop is."""

    def __init__(self, cfg: Dp3Config, data: ReplayData, s: Dp3Train, ranks: Any, device: torch.device,
                 ckpt_dir: Path, extra: dict[str, Any] | None, say: Callable[[str], None], stop: StopFlag) -> None:
        self.cfg, self.s, self.ranks, self.device, self.ckpt_dir = cfg, s, ranks, device, ckpt_dir
        self.extra, self.say, self.stop = extra or {}, say, stop
        random.seed(s.seed)
        np.random.seed(s.seed)
        torch.manual_seed(s.seed)
        self.data = data.to(device if s.num_workers == 0 else torch.device("cpu"))
        self.mask = val_mask(self.data.n_episodes, s.val_ratio, s.seed)
        pad = (cfg.n_obs_steps - 1, cfg.n_action_steps - 1)
        train_rows = window_table(self.data.episode_ends, ~self.mask, cfg.horizon, *pad)
        val_rows = window_table(self.data.episode_ends, self.mask, cfg.horizon, *pad)
        self.sampler, self.val_sampler = WindowSampler(self.data, train_rows), WindowSampler(self.data, val_rows)
        self.model = build_model(cfg, self.data, train_rows, device)
        self.ema = Ema(self.model, copy_module=True) if s.ema else None
        self.graphed = s.cuda_graph and device.type == "cuda"
        self.opt = make_optimizer(self.model, s, device, self.graphed)
        # A last batch with fewer rows than processes would leave a rank with none (its loss NaN, averaged into
        # every rank's gradients): the epoch then ends with the last full batch.
        rest = len(self.sampler) % s.batch_size
        self.per_epoch = len(self.sampler) // s.batch_size + (1 if rest >= ranks.world else 0)
        if self.per_epoch == 0:
            msg = (f"{len(self.sampler)} training windows are fewer than the {ranks.world} processes that share each "
                   "batch: record more episodes, or train on fewer GPUs")
            raise DataShapeError(msg)
        self.total = self.per_epoch * s.epochs if s.max_steps is None else min(self.per_epoch * s.epochs, s.max_steps)
        self.sched = lr_scheduler(self.opt, "cosine", s.lr_warmup_steps, self.per_epoch * s.epochs)
        self.gens = {"sample": torch.Generator().manual_seed(s.seed),
                     "noise": torch.Generator(device).manual_seed(s.seed + 1)}
        self.loss_fn: torch.nn.Module = self.model
        if ranks.world > 1 and not self.graphed:
            self.loss_fn = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.epoch, self.batch0, self.global_step = 0, 0, 0
        self.perm_state: torch.Tensor | None = None
        self.stepper: GraphedStep | None = None
        self.metrics: Metrics | None = None
        self.result = TrainResult(0, epoch=0)
        self.t_log, self.n_log, self.smooth = time.perf_counter(), 0, SmoothRate()

    def restore(self, start: Path | None) -> bool:
        """Load the newest complete checkpoint (or `start`); False when there is none."""
        expect = {"job": self.extra.get("job"), "model": asdict(self.cfg)}
        found = _starting_point(self.ckpt_dir, start, expect, self.device)
        if found is None:
            self.say(f"train: nothing to resume in {self.ckpt_dir}; starting from scratch")
            return False
        path, payload = found
        self.model.load_state_dict(payload["state_dicts"]["model"], strict=True)
        if self.ema is not None and payload["state_dicts"].get("ema_model") is not None:
            self.ema.model.load_state_dict(payload["state_dicts"]["ema_model"], strict=True)
            self.ema.steps = payload["loop"]["ema_steps"]
        self.opt.load_state_dict(payload["state_dicts"]["optimizer"])
        self.sched.load_state_dict(payload["state_dicts"]["lr_scheduler"])
        _set_rng(payload["rng"], self.gens)
        loop = payload["loop"]
        self.epoch, self.batch0, self.global_step = loop["epoch"], loop["batch_in_epoch"], loop["global_step"]
        self.perm_state = loop["perm_state"]
        if self.ranks.rank:  # each rank draws its own noise; rank 0's stream continues as in a one-GPU run
            self.gens["noise"].manual_seed(self.s.seed + 1 + 1000 * self.ranks.rank + self.global_step)
        self.say(f"train: resumed from {path} at step {self.global_step} (epoch {self.epoch}, batch {self.batch0})")
        return True

    def announce(self) -> None:
        s, ranks = self.s, self.ranks
        self.say(f"train: {sum(p.numel() for p in self.model.parameters()):,} parameters, {len(self.sampler)} training "
                 f"windows ({int((~self.mask).sum())} episodes), {len(self.val_sampler)} validation windows, "
                 f"{self.per_epoch} batches an epoch, device {self.device}"
                 + (f", {ranks.world} processes (batch {s.batch_size} split across them)" if ranks.world > 1 else ""))

    def save(self, val_loss: float | None, next_epoch: int, next_batch: int, p_state: torch.Tensor | None) -> Path | None:
        """Rank 0 writes the checkpoint; every rank gathers first (ZeRO-1: the EMA and optimizer shards), frees the
        gathered state after and waits for rank 0."""
        if self.stepper is not None:
            self.stepper.gather()
        path = None
        if self.ranks.main:
            ema, cfg, s = self.ema, self.cfg, self.s
            payload = {
                "cfg": {"model": asdict(cfg), "train": s.settings(), **self.extra},
                "state_dicts": {"model": self.model.state_dict(), "ema_model": ema.model.state_dict() if ema else None,
                                "optimizer": self.opt.state_dict(), "lr_scheduler": self.sched.state_dict()},
                "pickles": {"global_step": self.global_step, "epoch": next_epoch},
                "loop": {"epoch": next_epoch, "batch_in_epoch": next_batch, "global_step": self.global_step,
                         "perm_state": p_state, "ema_steps": ema.steps if ema else 0},
                "rng": _rng_state(self.gens), "val_episodes": np.nonzero(self.mask)[0].tolist(), "epoch": next_epoch,
            }
            path = checkpoints.save(self.ckpt_dir, self.global_step, payload, val_loss=val_loss, keep=s.keep_checkpoints)
            self.result.last_checkpoint = path
            if self.metrics is not None:
                self.metrics.plot()
        if self.stepper is not None:
            self.stepper.release()
        distributed.barrier(self.ranks)
        return path

    def loop(self) -> TrainResult:
        s = self.s
        if self.graphed:
            self.stepper = GraphedStep(self.model, self.opt, self.sched, self.ema, s.grad_clip, compile=s.compile,
                                       say=self.say, ranks=(self.ranks.rank, self.ranks.world), shard=s.shard_optimizer,
                                       reduce_dtype=torch.bfloat16 if s.grad_reduce == "bf16" else None,
                                       gather_dtype=torch.bfloat16 if s.weight_gather == "bf16" else None)
        self.t_log = time.perf_counter()
        while self.epoch < s.epochs:
            if self._epoch():
                break
            self.batch0, self.epoch = 0, self.epoch + 1
            self._end_of_epoch()
        self.result.global_step, self.result.epoch = self.global_step, self.epoch
        return self.result

    def _epoch(self) -> bool:
        """The rest of this epoch's batches; True when training stops inside it (signal, save-and-stop, max_steps)."""
        s, ranks, gens = self.s, self.ranks, self.gens
        if self.perm_state is None or self.batch0 == 0:
            self.perm_state = gens["sample"].get_state()
        else:
            gens["sample"].set_state(self.perm_state)
        # Drawn on the CPU generator (reproducible anywhere), moved to the device once an epoch: slicing a
        # device tensor each step never makes the host wait for the GPU.
        perm = torch.randperm(len(self.sampler), generator=gens["sample"]).to(self.data.state.device)
        chunks = [perm[bi * s.batch_size:(bi + 1) * s.batch_size][ranks.rank::ranks.world]
                  for bi in range(self.batch0, self.per_epoch)]
        batches = (worker_batches(self.sampler, chunks, s.num_workers, self.device) if s.num_workers
                   else (self.sampler.batch(rows) for rows in chunks))
        try:
            return self._steps(chunks, batches, len(perm))
        finally:
            batches.close()  # an epoch left early stops its loader's workers now, not at exit

    def _steps(self, chunks: list[torch.Tensor], batches: Any, n: int) -> bool:
        """The epoch's optimizer steps over `batches`; True when training stops among them."""
        s, ranks, gens = self.s, self.ranks, self.gens
        for bi, rows, batch in zip(range(self.batch0, self.per_epoch), chunks, batches, strict=True):
            if self.stepper is not None:
                # the same choice on every rank: full batches replay the graph (whose collectives all join)
                loss = self.stepper(batch, gens["noise"], full=(bi + 1) * s.batch_size <= n)
            else:
                loss = train_step(self.loss_fn, self.model, self.opt, self.sched, self.ema, batch, gens["noise"],
                                  s.grad_clip)
            self.global_step += 1
            self.n_log += len(rows) * ranks.world
            if self.global_step % s.log_every == 0 or self.global_step == 1:
                self._log(loss)
            if self._stop_or_save(bi):
                return True
        return False

    def _log(self, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        self.result.losses.append(value)
        rate = self.n_log / max(1e-9, time.perf_counter() - self.t_log)
        lr = float(self.sched.get_last_lr()[0])
        assert self.metrics is not None
        self.metrics.log(self.global_step, {"loss": value, "lr": lr, "samples_per_s": rate, "epoch": self.epoch})
        bar = progress(self.global_step, self.total, self.smooth.update(rate), self.s.batch_size)
        self.say(f"train: step {self.global_step}/{self.total} {bar} epoch {self.epoch} loss {value:.5f} lr {lr:.2e} "
                 f"{rate:.0f} samples/s")
        self.t_log, self.n_log = time.perf_counter(), 0

    def _stop_or_save(self, bi: int) -> bool:
        """Checkpoint on request, on a stop signal or at max_steps; True when training stops here."""
        s, ranks = self.s, self.ranks
        done = s.max_steps is not None and self.global_step >= s.max_steps
        # Ranks agree on stopping at log steps only: a per-step all-reduce would make every process wait for its
        # GPU before launching the next step.
        check = ranks.world == 1 or self.global_step % s.log_every == 0
        stopping = check and distributed.any_rank(self.stop.signal is not None, ranks, self.device)
        saving = check and distributed.any_rank(self.stop.save_now, ranks, self.device)
        if not (stopping or saving or done):
            return False
        at_end = bi + 1 == self.per_epoch
        saved = self.save(None, self.epoch + 1 if at_end else self.epoch, 0 if at_end else bi + 1,
                          None if at_end else self.perm_state)
        self.stop.save_now = False
        if not (stopping or done):
            return False
        # a rank that got no signal stops with the others
        self.result.stopped_by = "max_steps" if done else self.stop.stopped_by
        self.say(f"train: stopped ({self.result.stopped_by}) at step {self.global_step}; checkpoint {saved}")
        return True

    def _end_of_epoch(self) -> None:
        """Validation (also at every checkpoint: best.ckpt is chosen by validation loss) and the epoch's checkpoint."""
        s, epoch = self.s, self.epoch
        val_loss = None
        validating = len(self.val_sampler) > 0 and (epoch % s.val_every == 0 or epoch == s.epochs
                                                    or epoch % s.checkpoint_every == 0)
        if validating and self.stepper is not None:
            self.stepper.gather(optimizer=False)  # every rank (ZeRO-1: the EMA shards)
        if self.ranks.main and validating:
            model = self.ema.model if self.ema else self.model
            val_loss = validate(model, self.val_sampler, s.batch_size, self.device)
            assert self.metrics is not None
            self.metrics.log(self.global_step, {"val_loss": val_loss, "epoch": epoch})
            self.say(f"train: epoch {epoch} validation loss {val_loss:.5f}")
        if epoch % s.checkpoint_every == 0 or epoch == s.epochs:
            t_save = time.perf_counter()
            saved = self.save(val_loss, epoch, 0, None)
            if saved is not None:
                self.say(checkpoint_line(saved, tree_bytes(saved), time.perf_counter() - t_save))


def _starting_point(ckpt_dir: Path, start: Path | None, expect: dict[str, Any], device: torch.device
                    ) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a resumed run continues: `start` when one is named (refused, not skipped, when it is
    another job's or model's), else the newest that verifies in `ckpt_dir`."""
    if start is None:
        return checkpoints.load_latest(ckpt_dir, map_location=device, expect=expect)
    payload = checkpoints.load_file(start, device)
    why = checkpoints.foreign(payload, expect)
    if why:
        raise CheckpointError(start, f"cannot start from it: {why}")
    return start, payload


def _quiet(_message: str) -> None:
    """Ranks other than 0 print nothing: one log, not one a GPU."""


@torch.no_grad()
def validate(model: DP3, sampler: WindowSampler, batch_size: int, device: torch.device) -> float:
    gen = torch.Generator(device).manual_seed(1234)
    total, n = 0.0, 0
    for start in range(0, len(sampler), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(sampler)))
        pc, pos, act = (t.to(device) for t in sampler.batch(rows))
        loss = model.compute_loss(pc, pos, act, generator=gen)
        total += float(loss) * len(rows)
        n += len(rows)
    return total / max(1, n)


if __name__ == "__main__":
    sys.exit("run DP3 training through the runner: `runner train JOB`")
