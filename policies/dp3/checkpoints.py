"""Checkpoint files: written to a temp name then renamed, listed in a manifest, found by step (not mtime).

`checkpoints/step-<global_step>.ckpt` (torch.save dict), `checkpoints/manifest.json` (complete checkpoints with
step, epoch, validation loss and sha256), `checkpoints/best.ckpt` (lowest validation loss). The newest complete
one is the highest step that verifies: a truncated, corrupt or altered file (its sha256 differs from the manifest's)
and another job's or another model configuration's checkpoint are skipped with a warning naming why. The manifest
records each file's job and model configuration, so finding the newest reads checksums, not whole checkpoints
(files an older runner recorded without them are loaded to tell). Files are read by policies.checkpoint_io.load:
nothing in a checkpoint can run code. Finding and pruning is policies/checkpoint_store.py's.
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
from policies.checkpoint_store import CheckpointStore, mismatch, plain_json
from runner.atomic import remove_stale_temps, write_text_atomic

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d+)\.ckpt$")
MANIFEST = "manifest.json"


def save(folder: Path, step: int, payload: dict[str, Any], *, val_loss: float | None, keep: int) -> Path:
    """Write step-<step>.ckpt atomically, record it, keep the last `keep` and the best by validation loss."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temps(folder):
        log.info(f"removed {stale.name}, left by a checkpoint write that was killed")
    store = Dp3Store(folder)
    path = store.path(step)
    digest = checkpoint_io.write(payload, path)
    manifest = _read_manifest(folder)
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["step"] != step]
    cfg = payload.get("cfg") or {}
    manifest["checkpoints"].append({"step": step, "epoch": payload.get("epoch"), "file": path.name, "val_loss": val_loss,
                                    "sha256": digest, "cfg": plain_json({"job": cfg.get("job"), "model": cfg.get("model")})})
    best = manifest.get("best")
    if val_loss is not None and (best is None or val_loss < best["val_loss"]):
        tmp = folder / f".best.ckpt.{os.getpid()}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, folder / "best.ckpt")
        manifest["best"] = {"step": step, "val_loss": val_loss, "sha256": digest}
    gone = {p.name for p in store.prune(keep)}
    manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c.get("file") not in gone]
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


def _entry(folder: Path, path: Path) -> dict[str, Any]:
    """What the manifest recorded for `path` (a step file or best.ckpt): sha256 and cfg where it has them."""
    manifest = _read_manifest(folder)
    if path.name == "best.ckpt":
        entry = manifest.get("best") or {}
    else:
        entry = next((c for c in manifest["checkpoints"] if c.get("file") == path.name), {})
    return entry if isinstance(entry, dict) else {}


def recorded_sha256(folder: Path, path: Path) -> str | None:
    """The checksum the manifest recorded for `path` (a step file or best.ckpt), or None when it has none."""
    sha = _entry(folder, path).get("sha256")
    return sha if isinstance(sha, str) else None


def load_file(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """One checkpoint, verified against its manifest's sha256 when it has one; CheckpointError otherwise."""
    payload: Any = checkpoint_io.load(path, map_location, expect_sha256=recorded_sha256(path.parent, path))
    if not isinstance(payload, dict) or "state_dicts" not in payload or "cfg" not in payload:
        raise CheckpointError(path, "not a complete DP3 checkpoint of this runner (no state_dicts / cfg); an "
                                    "upstream DP3 checkpoint is imported with policies.dp3.upstream.import_upstream")
    return dict(payload)


def foreign(payload: Mapping[str, Any], expect: Mapping[str, Any]) -> str | None:
    """Why a loaded checkpoint belongs to another job or model configuration than `expect`, or None."""
    return mismatch(payload.get("cfg") or {}, expect)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=2))


class Dp3Store(CheckpointStore):
    """step-<n>.ckpt files (written whole, then renamed: a file present is a finished write)."""

    pattern = _NAME

    def path(self, step: int) -> Path:
        return self.folder / f"step-{step}.ckpt"

    def incomplete(self, path: Path) -> str | None:
        return None if path.is_file() else "not a checkpoint file"

    def check(self, path: Path, expect: Mapping[str, Any] | None) -> str | None:
        entry = _entry(self.folder, path)
        sha, cfg = entry.get("sha256"), entry.get("cfg")
        if isinstance(sha, str) and isinstance(cfg, dict):  # recorded by this runner: no need to load the file
            try:
                checkpoint_io.check_file(path)
            except CheckpointError as e:
                return e.reason
            if checkpoint_io.sha256(path) != sha:
                return "checksum mismatch: the file changed after it was written"
            return mismatch(cfg, expect) if expect else None
        try:
            payload = load_file(path)
        except CheckpointError as e:
            return e.reason
        return foreign(payload, expect) if expect else None


def load_latest(folder: Path, map_location: str | torch.device = "cpu",
                expect: Mapping[str, Any] | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies (and, with `expect`, is this job's and model's), loaded; every newer one
    is skipped with a warning that says why."""
    found = Dp3Store(folder).latest(expect)
    return None if found is None else (found[1], load_file(found[1], map_location))


def resolve(folder: Path, which: str, expect: Mapping[str, Any] | None = None) -> Path:
    """'latest', 'best', or a path -> a checkpoint file."""
    if which == "best" and (folder / "best.ckpt").exists():
        return folder / "best.ckpt"
    path = Dp3Store(folder).resolve("latest" if which == "best" else which, expect)
    if not path.is_file():
        msg = f"checkpoint {path} is not a file"
        raise FileNotFoundError(msg)
    return path
