"""Training metrics: metrics.jsonl in the run folder and in the lineage folder (all the runs that trained it), the
loss and learning-rate curves as train_curves.png in both, plus tensorboard or wandb when the job asks."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from policies import curves
from policies.context import StepInputError

log = logging.getLogger(__name__)


class Metrics:
    """metrics.jsonl in the run folder (and the lineage folder), curves, tensorboard or wandb when the job asks."""

    def __init__(self, run_dir: Path, logger: str, config: dict[str, Any], enabled: bool = True,
                 lineage: Path | None = None, title: str = "") -> None:
        self.run_dir, self.lineage, self.enabled, self.title = run_dir, lineage, enabled, title
        self.file = open(run_dir / "metrics.jsonl" if enabled else os.devnull, "a", buffering=1)  # noqa: SIM115
        if enabled and lineage is not None:
            lineage.mkdir(parents=True, exist_ok=True)
        self.lineage_file = (open(lineage / curves.LINEAGE_METRICS, "a", buffering=1)  # noqa: SIM115
                             if enabled and lineage is not None else None)
        self.plot_failed = False
        self.tb: Any = None
        self.wandb: Any = None
        if logger == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        elif logger == "wandb":
            try:
                import wandb  # type: ignore[import-not-found]
            except ImportError as e:
                msg = "steps.train.logger is wandb but wandb is not installed: add it to image.pip"
                raise StepInputError(msg) from e
            self.wandb = wandb.init(dir=str(run_dir), config=config)  # WANDB_MODE=offline works with no network

    def log(self, step: int, values: dict[str, float]) -> None:
        line = json.dumps({"step": step, **values, "run": self.run_dir.name}) + "\n"
        self.file.write(line)
        if self.lineage_file is not None:
            self.lineage_file.write(line)
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def plot(self) -> None:
        """train_curves.png of the lineage (every run that trained it) in the run folder and the lineage folder.
        A picture that cannot be drawn (no matplotlib) is reported once and never stops training."""
        if not self.enabled or self.plot_failed:
            return
        source = self.lineage / curves.LINEAGE_METRICS if self.lineage is not None else self.run_dir / "metrics.jsonl"
        try:
            out = curves.plot_lineage(curves.read_metrics(source), self.run_dir / curves.CURVES, self.title)
            if out is not None and self.lineage is not None:
                shutil.copyfile(out, self.lineage / curves.CURVES)
        except Exception as e:  # noqa: BLE001  # a plotting failure must not stop training
            self.plot_failed = True
            log.warning(f"training curves not drawn ({type(e).__name__}: {e})")

    def close(self) -> None:
        self.plot()
        self.file.close()
        if self.lineage_file is not None:
            self.lineage_file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class SmoothRate:
    """An exponentially weighted samples/s for the time left: one slow interval (the first steps' compilation, a
    validation, a checkpoint) moves the estimate a little, not from 13 minutes to 11 seconds."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight, self.value, self.intervals = weight, 0.0, 0

    def update(self, rate: float) -> float:
        """The estimate after this interval's rate; 0.0 (no estimate: progress() says "ETA ?") for the first
        interval, which holds the start-up (compilation, CUDA graph capture, the loader's first batches): a
        compiled RDT-1B's first step on two GPUs took ~100 s and read "ETA 1h05m" for 39 steps that then took ~10 s."""
        self.intervals += 1
        if self.intervals <= 2 or self.value <= 0:  # the second interval replaces the first's start-up rate
            self.value = rate
        else:
            self.value += self.weight * (rate - self.value)
        return 0.0 if self.intervals == 1 else self.value


def progress(step: int, total: int, samples_per_s: float, samples_per_step: int, width: int = 20) -> str:
    """'[#######.............]  35% ETA 1m05s': a progress bar that reads the same in a terminal and in the step's
    log file (one line a log interval, no carriage returns)."""
    frac = min(1.0, step / max(1, total))
    filled = int(frac * width)
    left = max(0, total - step) * samples_per_step / samples_per_s if samples_per_s > 0 else None
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac:4.0%} ETA {_duration(left)}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
