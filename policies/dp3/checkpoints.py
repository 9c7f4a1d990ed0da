"""Checkpoint files: written to a temp name then renamed, listed in a manifest, found by step (not mtime).

`checkpoints/step-<global_step>.ckpt` (torch.save dict), `checkpoints/manifest.json` (complete checkpoints with
step, epoch, validation loss and sha256), `checkpoints/best.ckpt` (lowest validation loss). The newest complete
one is the highest step that loads: a truncated, corrupt or altered file (its sha256 differs from the manifest's)
and another job's or another model configuration's checkpoint are skipped with a warning naming why. Files are
read by policies.checkpoint_io.load: nothing in a checkpoint can run code.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from policies import checkpoint_io
from policies.checkpoint_io import CheckpointError
from runner.atomic import remove_stale_temps, write_text_atomic

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d+)\.ckpt$")
MANIFEST = "manifest.json"


def save(folder: Path, step: int, payload: dict[str, Any], *, val_loss: float | None, keep: int) -> Path:
    """Write step-<step>.ckpt atomically, record it, keep the last `keep` and the best by validation loss."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temps(folder):
        log.info(f"removed {stale.name}, left by a checkpoint write that was killed")
    path = folder / f"step-{step}.ckpt"
    digest = checkpoint_io.write(payload, path)
    manifest = _read_manifest(folder)
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["step"] != step]
    manifest["checkpoints"].append({"step": step, "epoch": payload.get("epoch"), "file": path.name, "val_loss": val_loss,
                                    "sha256": digest})
    best = manifest.get("best")
    if val_loss is not None and (best is None or val_loss < best["val_loss"]):
        tmp = folder / f".best.ckpt.{os.getpid()}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, folder / "best.ckpt")
        manifest["best"] = {"step": step, "val_loss": val_loss, "sha256": digest}
    steps = sorted((c["step"] for c in manifest["checkpoints"]), reverse=True)
    for old in steps[keep:]:
        (folder / f"step-{old}.ckpt").unlink(missing_ok=True)
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["step"] in steps[:keep]]
    _write_manifest(folder, manifest)
    return path


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {"checkpoints": [], "best": None}
    ok = isinstance(data, dict) and isinstance(data.get("checkpoints"), list) and all(
        isinstance(c, dict) and isinstance(c.get("step"), int) for c in data["checkpoints"])
    if not ok:
        log.warning(f"{folder / MANIFEST} is not a checkpoint manifest; starting a new one")
        return {"checkpoints": [], "best": None}
    return {**data, "best": data["best"] if isinstance(data.get("best"), dict) else None}


def recorded_sha256(folder: Path, path: Path) -> str | None:
    """The checksum the manifest recorded for `path` (a step file or best.ckpt), or None when it has none."""
    manifest = _read_manifest(folder)
    if path.name == "best.ckpt":
        best = manifest.get("best") or {}
        return best.get("sha256") if isinstance(best.get("sha256"), str) else None
    entry = next((c for c in manifest["checkpoints"] if c.get("file") == path.name), None)
    return entry.get("sha256") if entry and isinstance(entry.get("sha256"), str) else None


def load_file(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """One checkpoint, verified against its manifest's sha256 when it has one; CheckpointError otherwise."""
    payload: Any = checkpoint_io.load(path, map_location, expect_sha256=recorded_sha256(path.parent, path))
    if not isinstance(payload, dict) or "state_dicts" not in payload or "cfg" not in payload:
        raise CheckpointError(path, "not a complete DP3 checkpoint of this runner (no state_dicts / cfg); an "
                                    "upstream DP3 checkpoint is imported with policies.dp3.upstream.import_upstream")
    return dict(payload)


def foreign(payload: Mapping[str, Any], expect: Mapping[str, Any]) -> str | None:
    """Why a checkpoint belongs to another job or model configuration than `expect` ({"job", "model"}), or None."""
    cfg = payload.get("cfg") or {}
    if expect.get("job") is not None and cfg.get("job") not in (None, expect["job"]):
        return f"it was written by job {cfg.get('job')!r}, not {expect['job']!r}"
    mine, theirs = dict(expect.get("model") or {}), dict(cfg.get("model") or {})
    differ = [k for k in sorted(set(mine) | set(theirs)) if _plain(mine.get(k)) != _plain(theirs.get(k))]
    if mine and differ:
        shown = ", ".join(f"{k} {_plain(theirs.get(k))} (job: {_plain(mine.get(k))})" for k in differ[:4])
        return f"its model configuration differs: {shown}"
    return None


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=2))


def candidates(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step-N.ckpt, newest step first."""
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.ckpt") if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def load_latest(folder: Path, map_location: str | torch.device = "cpu",
                expect: Mapping[str, Any] | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads completely, verifies and (with `expect`) belongs to this job and model;
    every other one is skipped with a warning that says why."""
    for _, path in candidates(folder):
        try:
            payload = load_file(path, map_location)
        except CheckpointError as e:
            log.warning(f"skipping {e}")
            continue
        why = foreign(payload, expect) if expect else None
        if why:
            log.warning(f"skipping {path}: {why}")
            continue
        return path, payload
    return None


def resolve(folder: Path, which: str, expect: Mapping[str, Any] | None = None) -> Path:
    """'latest', 'best', or a path -> a checkpoint file."""
    if which == "best" and (folder / "best.ckpt").exists():
        return folder / "best.ckpt"
    if which in ("latest", "best"):
        found = load_latest(folder, expect=expect)
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
