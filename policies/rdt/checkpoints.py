"""RDT checkpoints in upstream's layout and the DeepSpeed config, both without side effects beyond files.

`<output>/checkpoint-<step>/` holds what accelerate's save_state writes (with DeepSpeed: `pytorch_model/
mp_rank_00_model_states.pt` with key `module`, optimizer shards, RNG states), the EMA as `ema/model.safetensors`,
the resolved config, and `COMPLETE`, written last: a folder without it is skipped with a warning.
`checkpoints_total_limit` is enforced here (upstream passes it to accelerate, which ignores it for named folders).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from runner.atomic import write_text_atomic

_NAME = re.compile(r"^checkpoint-(\d+)$")
COMPLETE = "COMPLETE"


def render_deepspeed_config(*, zero_stage: int, mixed_precision: str, grad_accum: int, micro_batch: int) -> dict[str, Any]:
    """configs/zero2.json as upstream writes it, with the batch sizes filled in from the job (not "auto")."""
    return {
        "bf16": {"enabled": mixed_precision == "bf16"},
        "fp16": {"enabled": mixed_precision == "fp16"},
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "zero_optimization": {"stage": zero_stage, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_scatter": True, "allgather_partitions": True},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
    }


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / f"checkpoint-{step}"


def mark_complete(folder: Path, meta: dict[str, Any]) -> None:
    """Write the resolved config, then COMPLETE: the last file, so its presence means the rest is there."""
    (folder / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    write_text_atomic(folder / COMPLETE, json.dumps({"step": meta.get("step")}))


def complete_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """(step, folder) of complete checkpoints, newest step first; incomplete ones are reported and skipped."""
    found = []
    for p in output.iterdir() if output.is_dir() else []:
        m = _NAME.match(p.name)
        if not m or not p.is_dir():
            continue
        if not (p / COMPLETE).is_file():
            sys.stderr.write(f"warning: skipping {p}: incomplete checkpoint (no {COMPLETE} marker)\n")
            continue
        found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def latest(output: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(output)
    return found[0] if found else None


def enforce_limit(output: Path, total_limit: int) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `total_limit`; returns what was removed."""
    removed = []
    for _, folder in complete_checkpoints(output)[total_limit:]:
        shutil.rmtree(folder)
        removed.append(folder)
    return removed


def set_aside(output: Path, stamp: str) -> Path | None:
    """A fresh (not resumed) training run moves earlier checkpoint folders to `superseded-<stamp>/`: they are kept,
    and cannot be mistaken for this run's (by resume, or by the total limit pruning the new ones)."""
    old = [p for p in output.iterdir() if _NAME.match(p.name)] if output.is_dir() else []
    if not old:
        return None
    target = output / f"superseded-{stamp}"
    target.mkdir(parents=True)
    for p in old:
        p.rename(target / p.name)
    return target
