"""RDT checkpoints in upstream's layout, without side effects beyond files.

`<output>/checkpoint-<step>/` holds what accelerate's save_state writes (with DeepSpeed: `pytorch_model/
mp_rank_00_model_states.pt` with key `module`, optimizer shards, RNG states), the EMA as `ema/model.safetensors`,
the resolved config, and `COMPLETE`, written last: a folder without it is skipped with a warning.
`checkpoints_total_limit` is enforced here (upstream passes it to accelerate, which ignores it for named folders).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from policies import checkpoint_io
from runner.atomic import write_text_atomic

log = logging.getLogger(__name__)

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
    if expect and isinstance(config, dict):
        if expect.get("job") is not None and config.get("job") not in (None, expect["job"]):
            return f"it was written by job {config.get('job')!r}, not {expect['job']!r}"
        mine, theirs = expect.get("model") or {}, config.get("model") or {}
        differ = [k for k in sorted(mine) if k in theirs and json.dumps(mine[k]) != json.dumps(theirs[k])]
        if differ:
            return "its model configuration differs: " + ", ".join(f"{k} {theirs[k]} (job: {mine[k]})" for k in differ[:4])
    return None


def complete_checkpoints(output: Path) -> list[tuple[int, Path]]:
    """(step, folder) of complete checkpoints, newest step first; incomplete ones are reported and skipped."""
    found = []
    for p in output.iterdir() if output.is_dir() else []:
        m = _NAME.match(p.name)
        if not m or not p.is_dir():
            continue
        if not (p / COMPLETE).is_file():
            log.warning(f"skipping {p}: incomplete checkpoint (no {COMPLETE} marker)")
            continue
        found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def latest(output: Path, expect: Mapping[str, Any] | None = None) -> tuple[int, Path] | None:
    """The newest complete checkpoint that verifies; the others are skipped with a warning saying why."""
    for step, folder in complete_checkpoints(output):
        why = verify(folder, expect)
        if why is None:
            return step, folder
        log.warning(f"skipping {folder}: {why}")
    return None


def enforce_limit(output: Path, total_limit: int) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `total_limit`; returns what was removed."""
    removed = []
    for _, folder in complete_checkpoints(output)[total_limit:]:
        shutil.rmtree(folder)
        removed.append(folder)
    return removed
