"""Training metrics: metrics.jsonl in the run folder, plus tensorboard or wandb when the job asks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Metrics:
    """metrics.jsonl in the run folder, plus tensorboard or wandb when the job asks."""

    def __init__(self, run_dir: Path, logger: str, config: dict[str, Any], enabled: bool = True) -> None:
        self.file = open(run_dir / "metrics.jsonl" if enabled else os.devnull, "a", buffering=1)  # noqa: SIM115
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
                raise SystemExit(msg) from e
            self.wandb = wandb.init(dir=str(run_dir), config=config)  # WANDB_MODE=offline works with no network

    def log(self, step: int, values: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
