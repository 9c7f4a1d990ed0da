"""Checkpoint files: written to a temp name then renamed, listed in a manifest, found by step (not mtime).

`checkpoints/step-<global_step>.ckpt` (torch.save dict), `checkpoints/manifest.json` (complete checkpoints with
step, epoch and validation loss), `checkpoints/best.ckpt` (lowest validation loss). The newest complete one is
the highest step that loads; a truncated or corrupt file is skipped with a warning.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from runner.atomic import write_text_atomic

_NAME = re.compile(r"^step-(\d+)\.ckpt$")
MANIFEST = "manifest.json"


def save(folder: Path, step: int, payload: dict[str, Any], *, val_loss: float | None, keep: int) -> Path:
    """Write step-<step>.ckpt atomically, record it, keep the last `keep` and the best by validation loss."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step}.ckpt"
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    manifest = _read_manifest(folder)
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["step"] != step]
    manifest["checkpoints"].append({"step": step, "epoch": payload.get("epoch"), "file": path.name, "val_loss": val_loss})
    best = manifest.get("best")
    if val_loss is not None and (best is None or val_loss < best["val_loss"]):
        shutil.copyfile(path, folder / ".best.tmp")
        os.replace(folder / ".best.tmp", folder / "best.ckpt")
        manifest["best"] = {"step": step, "val_loss": val_loss}
    steps = sorted((c["step"] for c in manifest["checkpoints"]), reverse=True)
    for old in steps[keep:]:
        (folder / f"step-{old}.ckpt").unlink(missing_ok=True)
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["step"] in steps[:keep]]
    _write_manifest(folder, manifest)
    return path


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
        return data
    except (OSError, json.JSONDecodeError):
        return {"checkpoints": [], "best": None}


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=2))


def candidates(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step-N.ckpt, newest step first."""
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.ckpt") if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def load_latest(folder: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads completely; corrupt or truncated ones are skipped with a warning."""
    for _, path in candidates(folder):
        try:
            payload: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, the next one is tried
            sys.stderr.write(f"warning: skipping {path}: unreadable checkpoint ({type(e).__name__}: {e})\n")
            continue
        if not isinstance(payload, dict) or "state_dicts" not in payload:
            sys.stderr.write(f"warning: skipping {path}: not a complete checkpoint\n")
            continue
        return path, payload
    return None


def resolve(folder: Path, which: str) -> Path:
    """'latest', 'best', or a path -> a checkpoint file."""
    if which == "best" and (folder / "best.ckpt").exists():
        return folder / "best.ckpt"
    if which in ("latest", "best"):
        found = load_latest(folder)
        if found is None:
            msg = f"no complete checkpoint in {folder}; train first (`runner train JOB`)"
            raise FileNotFoundError(msg)
        return found[0]
    path = Path(which)
    if not path.is_absolute():
        path = folder / path
    if not path.is_file():
        msg = f"checkpoint {path} does not exist"
        raise FileNotFoundError(msg)
    return path
