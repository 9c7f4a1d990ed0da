"""What both policies' training loops share: diffusers' learning-rate schedules, the result of a run, and what a
compiled run says before its first step."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from policies.checkpoint_store import human_bytes

#: diffusers' get_scheduler names this runner supports.
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")


def lr_factor(name: str, warmup: int, total: int) -> Callable[[int], float]:
    """diffusers' get_scheduler factors, per optimizer step: `constant`; `constant_with_warmup`; `linear` and
    `cosine` (half a cosine to zero), both after a linear warm-up."""
    if name not in SCHEDULES:
        msg = f"unknown learning-rate schedule {name!r} (known: {', '.join(SCHEDULES)})"
        raise ValueError(msg)

    def factor(step: int) -> float:
        if name == "constant":
            return 1.0
        if step < warmup:
            return step / max(1, warmup)
        if name == "constant_with_warmup":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if name == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def lr_scheduler(opt: torch.optim.Optimizer, name: str, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(name, warmup, total))


@dataclass
class TrainResult:
    """Where a training run stopped: its step (and epoch, for epoch-based training), why it stopped early (a signal,
    max_steps) or None, the last checkpoint written, and the losses it logged."""

    global_step: int
    stopped_by: str | None = None
    last_checkpoint: Path | None = None
    losses: list[float] = field(default_factory=list)
    epoch: int | None = None


def compile_note(clause: str, environ: Mapping[str, str] | None = None) -> str:
    """The line before a compiled run's first step, which is otherwise silent for minutes (RDT-1B: ~100 s): what
    compiles (`clause`), and where its kernels are cached (the runner points TORCHINDUCTOR_CACHE_DIR into the job
    folder), so that a later run or resume knows to expect less."""
    cache = (os.environ if environ is None else environ).get("TORCHINDUCTOR_CACHE_DIR")
    if not cache:
        return f"train: {clause} (minutes); the kernels are cached under /tmp, which a container loses"
    folder = Path(cache)
    warm = folder.is_dir() and any(folder.iterdir())
    return (f"train: {clause}; kernels cached in {cache} "
            + ("(earlier runs' kernels are there: a shorter compile)" if warm
               else "(empty: this run compiles everything (minutes), later runs and resumes reuse it)"))


def checkpoint_line(path: Path, size: int, seconds: float, environ: Mapping[str, str] | None = None) -> str:
    """`train: checkpoint PATH (size in time)` (`size`: tree_bytes), and a warning when the write took more than
    half the step's stop grace (RUNNER_STOP_GRACE_S, which the runner sets from steps.train.stop_grace_s): a stop
    (Ctrl-C, `runner stop`, Slurm's signal before the time limit) ends with a checkpoint, and one slower than the
    grace is killed unfinished (its temporary folder is never taken for a checkpoint, but the steps since the last
    one are lost)."""
    line = f"train: checkpoint {path} ({human_bytes(size)} in {seconds:.1f} s)"
    try:
        grace = float((os.environ if environ is None else environ).get("RUNNER_STOP_GRACE_S") or 0)
    except ValueError:
        grace = 0.0
    if grace and seconds > grace / 2:
        line += (f"\nwarning: the checkpoint took {seconds:.0f} s to write, more than half the {grace:g} s a stopped step "
                 "has before it is killed: raise steps.train.stop_grace_s so that a stop (Ctrl-C, `runner stop`, "
                 "Slurm's warning signal) can finish its checkpoint")
    return line


def tree_bytes(path: Path) -> int:
    """The size of a file, or of every file under a folder."""
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path] if path.is_file() else []
    return sum(f.stat().st_size for f in files)


def disk_warning(folder: Path, size: int, kept: int, held: int, to_come: int, free: int) -> str | None:
    """A warning when the checkpoints still to come will not fit: `size` bytes each (the one just written), the
    lineage in `folder` holding `held` now and keeping at most `kept` (checkpoints_total_limit; one more while the
    newest is written, before the oldest goes), `to_come` more from this run, `free` bytes left on the disk."""
    peak = min(held + to_come, kept + 1) if to_come else held
    need = size * max(0, peak - held)
    if need <= free:
        return None
    return (f"warning: {folder} has {human_bytes(free)} free, but this run writes {to_come} more checkpoints of "
            f"{human_bytes(size)} and the lineage keeps up to {kept} (checkpoints_total_limit): {human_bytes(need)} more at its "
            "peak. Training would stop at a failed write: lower steps.train.checkpoints_total_limit, raise "
            "checkpointing_period, or free space (`runner gc`)")
