"""RDT checkpoints in upstream's layout, without side effects beyond files.

`<output>/checkpoint-<step>/` holds what accelerate's save_state writes (with DeepSpeed: `pytorch_model/
mp_rank_00_model_states.pt` with key `module`, optimizer shards, RNG states), the EMA as `ema/model.safetensors`,
the resolved config, and `COMPLETE`, written last: a folder without it is skipped with a warning.
Finding, pruning and refusing checkpoints is policies/checkpoint_store.py's; this module says what an RDT one is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from policies import checkpoint_io
from policies.checkpoint_store import CheckpointStore, mismatch
from runner.atomic import write_text_atomic

_NAME = re.compile(r"^checkpoint-(\d+)$")
COMPLETE = "COMPLETE"


def checkpoint_dir(output: Path, step: int) -> Path:
    return output / f"checkpoint-{step}"


def mark_complete(folder: Path, meta: dict[str, Any]) -> None:
    """Write the resolved config, then COMPLETE: the last file, so its presence means the rest is there. COMPLETE
    lists every file with its size and sha256, which `verify` checks before anything loads from the folder."""
    (folder / "config.json").write_text(json.dumps(meta, indent=2, default=str))
    files = checkpoint_io.folder_digest(folder, skip=(COMPLETE,))
    write_text_atomic(folder / COMPLETE, json.dumps({"step": meta.get("step"), "files": files}, indent=1))


def verify(folder: Path, expect: Mapping[str, Any] | None = None) -> str | None:
    """Why `folder` must not be loaded, or None: a file altered, missing or added since COMPLETE was written, a
    pickle naming anything but tensors and plain data, or (with `expect`) another job's or model's checkpoint."""
    try:
        marker = json.loads((folder / COMPLETE).read_text())
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    except (OSError, ValueError) as e:
        return f"unreadable {COMPLETE} or config.json ({e})"
    files = marker.get("files") if isinstance(marker, dict) else None
    if isinstance(files, dict):
        why = checkpoint_io.verify_folder(folder, files)
        if why:
            return why
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".pt", ".pkl", ".bin"):
            try:
                checkpoint_io.check_pickles(p)
            except checkpoint_io.CheckpointError as e:
                return e.reason if p == folder else f"{p.relative_to(folder)}: {e.reason}"
    return mismatch(config, expect) if expect and isinstance(config, dict) else None


class RdtStore(CheckpointStore):
    """checkpoint-<step>/ folders, complete once COMPLETE is written; `checkpoints_total_limit` is `prune`
    (upstream passes it to accelerate, which ignores it for named folders)."""

    pattern = _NAME

    def path(self, step: int) -> Path:
        return checkpoint_dir(self.folder, step)

    def incomplete(self, path: Path) -> str | None:
        if not path.is_dir():
            return "not a checkpoint folder"
        return None if (path / COMPLETE).is_file() else f"incomplete checkpoint (no {COMPLETE} marker)"

    def check(self, path: Path, expect: Mapping[str, Any] | None) -> str | None:
        return verify(path, expect)
