"""Episode HDF5 files -> the DP3 replay buffer upstream reads (zarr format v2, zarr 2 API):

    data/point_cloud (N, P, C) f32   data/state (N, D) f32   data/action (N, D) f32   meta/episode_ends (E,) i64
Blosc zstd level 3 with shuffle, 100-sample chunks, as RoboTwin's process_data.py writes it. Dimensions come
from the data; a dimension that differs between episodes is refused before anything is written. The task's
shape metadata goes into the buffer's attributes and a sidecar `<name>.yaml`, so no config is edited by hand.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from policies.data.demos import Problem, ProblemsError
from policies.data.episodes import is_complete, read_attrs
from policies.data.transform import shift_actions
from runner.atomic import replace_dir, write_text_atomic

CHUNK = 100


class BufferError(ProblemsError):
    what = "cannot build the DP3 replay buffer"


@dataclass
class BufferReport:
    path: Path
    samples: int
    episodes: int
    state_dim: int
    point_shape: tuple[int, int]


def buffer_name(task: str, config: str, n: int) -> str:
    return f"{task}-{config}-{n}"


def write_buffer(episodes: list[Path], out: Path) -> BufferReport:
    """Build `out` (a .zarr folder) from episode files, atomically (temp folder, then rename)."""
    states, actions, clouds, ends, problems = [], [], [], [], []
    dims: dict[str, tuple[Any, str]] = {}
    attrs: dict[str, Any] = {}
    for path in episodes:
        name = path.stem
        if not is_complete(path):
            problems.append(Problem(name, None, "", f"{path} is missing or was not completely written; re-run convert"))
            continue
        attrs = read_attrs(path)
        with h5py.File(path, "r") as f:
            if "pointcloud" not in f:
                problems.append(Problem(name, None, "pointcloud", "missing: convert with point clouds "
                                        "(the old ZeroDivisionError inside zarr)"))
                continue
            vector = f["joint_action/vector"][()].astype(np.float32)
            control = f["joint_action/control"][()].astype(np.float32)
            pc = f["pointcloud"][()].astype(np.float32)
        for key, value in (("state/action dim", vector.shape[1:]), ("point cloud shape", pc.shape[1:])):
            first = dims.setdefault(key, (value, name))
            if first[0] != value:
                problems.append(Problem(name, None, key, f"{value} differs from {first[0]} in {first[1]}"))
        if len(pc) != len(vector):
            problems.append(Problem(name, None, "pointcloud", f"{len(pc)} frames, joint_action/vector has {len(vector)}"))
        if not np.isfinite(pc).all():
            problems.append(Problem(name, None, "pointcloud", "NaN/inf values"))
        state, action, n = shift_actions(vector, control, str(attrs.get("action_source", "next_state")))
        if n < 1:
            problems.append(Problem(name, None, "", f"{len(vector)} frame(s) give no samples"))
        states.append(state)
        actions.append(action)
        clouds.append(pc[:n])
        ends.append(n)
    if problems:
        raise BufferError(problems)
    return _write(out, np.concatenate(states), np.concatenate(actions), np.concatenate(clouds),
                  np.cumsum(ends).astype(np.int64), attrs)


def _write(out: Path, state: np.ndarray, action: np.ndarray, pc: np.ndarray, ends: np.ndarray,
           conv: dict[str, Any]) -> BufferReport:
    import zarr

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    comp = zarr.Blosc(cname="zstd", clevel=3, shuffle=1)
    root = zarr.group(store=zarr.DirectoryStore(str(tmp)), overwrite=True)
    data, meta = root.create_group("data"), root.create_group("meta")
    data.create_dataset("point_cloud", data=pc, chunks=(CHUNK, *pc.shape[1:]), dtype="float32", compressor=comp)
    data.create_dataset("state", data=state, chunks=(CHUNK, state.shape[1]), dtype="float32", compressor=comp)
    data.create_dataset("action", data=action, chunks=(CHUNK, action.shape[1]), dtype="float32", compressor=comp)
    meta.create_dataset("episode_ends", data=ends, dtype="int64", compressor=comp)
    shape_meta = {"obs": {"point_cloud": {"shape": list(pc.shape[1:]), "type": "point_cloud"},
                          "agent_pos": {"shape": [state.shape[1]], "type": "low_dim"}},
                  "action": {"shape": [action.shape[1]]}}
    root.attrs["shape_meta"] = shape_meta
    root.attrs["conversion"] = {k: v for k, v in conv.items() if k not in ("source", "fingerprint", "kept_frames")}
    replace_dir(tmp, out)
    write_text_atomic(out.with_suffix(".yaml"), yaml.safe_dump(
        {"name": out.stem, "shape_meta": shape_meta, "zarr_path": out.name}, sort_keys=False))
    return BufferReport(out, len(state), len(ends), state.shape[1], (int(pc.shape[1]), int(pc.shape[2])))
