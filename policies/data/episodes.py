"""Episode HDF5 in the lab's layout (RoboTwin-style names), written to a temp name and renamed.

    endpose/ee_pos_quat (T,7) f64     endpose/gripper (T,)          joint_action/gripper (T,)
    joint_action/positions (T,J)      joint_action/velocities (T,D) joint_action/vector (T,D) = positions+gripper
    joint_action/control (T,D)        timestamps (T,)               observation/<cam>/rgb (T,) JPEG bytes
    observation/<cam>/depth_raw (T,H,W,1) f32 (raw units; attr depth_scale)   pointcloud (T,N,6) f32 (optional)
Attributes: the conversion options, `source`, and `complete` (set last, so a half-written file is never valid).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from robot.formats import write_attrs


@dataclass
class EpisodeData:
    ee_pos_quat: np.ndarray
    gripper: np.ndarray  # observation convention, after binarisation if asked
    positions: np.ndarray  # (T, J) joints without the gripper
    velocities: np.ndarray  # (T, D)
    control: np.ndarray  # (T, D), observation gripper convention
    timestamps: np.ndarray
    camera: str  # the camera the depth belongs to
    jpegs: dict[str, list[bytes]]  # camera -> JPEG per frame
    depth: np.ndarray | None  # (T,H,W) raw
    pointcloud: np.ndarray | None
    attrs: dict[str, Any]

    @property
    def vector(self) -> np.ndarray:
        return np.concatenate([self.positions, self.gripper[:, None]], axis=1)


def episode_path(root: Path, task: str, config: str, index: int) -> Path:
    return root / task / config / "data" / f"episode{index}.hdf5"


def write_episode(path: Path, ep: EpisodeData) -> None:
    """Write atomically: a temp file beside `path`, `complete` set last, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_hdf5(tmp, ep)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise
    os.replace(tmp, path)


def _quiet_h5py_close(u: Any, default: Any = sys.unraisablehook) -> None:
    """A failed write makes h5py's later close fail too, which it can only print as an "Exception ignored"
    traceback when the object is freed; the OSError raised by the write already said what happened."""
    if "h5py" in repr(getattr(u, "object", "")) or "h5py" in str(getattr(u, "err_msg", "")):
        return
    default(u)


def _write_hdf5(tmp: Path, ep: EpisodeData) -> None:
    sys.unraisablehook = _quiet_h5py_close
    with h5py.File(tmp, "w") as f:
        f["endpose/ee_pos_quat"] = ep.ee_pos_quat.astype(np.float64)
        f["endpose/gripper"] = ep.gripper.astype(np.float64)
        f["joint_action/gripper"] = ep.gripper.astype(np.float64)
        f["joint_action/positions"] = ep.positions.astype(np.float64)
        f["joint_action/velocities"] = ep.velocities.astype(np.float64)
        f["joint_action/vector"] = ep.vector.astype(np.float64)
        f["joint_action/control"] = ep.control.astype(np.float64)
        f["timestamps"] = ep.timestamps.astype(np.float64)
        for cam, jpegs in ep.jpegs.items():
            width = max((len(j) for j in jpegs), default=1)
            f.create_dataset(f"observation/{cam}/rgb", data=np.array(jpegs, dtype=f"S{width}"))
        if ep.depth is not None:
            d = f.create_dataset(f"observation/{ep.camera}/depth_raw", data=ep.depth[..., None].astype(np.float32),
                                 chunks=(1, *ep.depth.shape[1:], 1), compression="gzip", compression_opts=1)
            d.attrs["depth_scale"] = float(ep.attrs.get("depth_scale", 0.001))
        if ep.pointcloud is not None:
            f.create_dataset("pointcloud", data=ep.pointcloud.astype(np.float32))
        write_attrs(f, ep.attrs)
        f.attrs["complete"] = True


def is_complete(path: Path, fingerprint: str | None = None) -> bool:
    """A published episode that a later step may trust (and, with `fingerprint`, made from the same inputs)."""
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete", False)) and (fingerprint is None or f.attrs.get("fingerprint") == fingerprint)
    except (OSError, KeyError):
        return False


def read_attrs(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        out = {}
        for k, v in f.attrs.items():
            if (isinstance(v, str) and v[:1] in "{[") or v == "null":
                with contextlib.suppress(json.JSONDecodeError):
                    v = json.loads(v)
            out[k] = v.item() if isinstance(v, np.generic) else v
        return out
