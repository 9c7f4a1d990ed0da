"""A deploy run's episode HDF5, in the converter's episode layout (joint_action/*, observation/<camera>/rgb and
depth_raw, pointcloud, timestamps) plus timings and events, flushed at least every `flush_s` seconds so a crash
loses at most that much. `complete` is set when the run ends cleanly; the file then converts like a recorded demo
(policies/dp3/zarr_buffer.write_buffer, policies/rdt/convert.write_rdt)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from robot.formats import encode_jpeg, write_attrs


class Recorder:
    def __init__(self, path: Path, camera: str, attrs: dict[str, Any], flush_s: float = 1.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.camera, self.flush_s = path, camera, flush_s
        self.f = h5py.File(path, "w")
        write_attrs(self.f, attrs)
        self.f.attrs["complete"] = False
        self.f.attrs["source"] = "deploy"
        self.n = 0
        self.last_flush = time.monotonic()
        self.events: list[dict[str, Any]] = []

    def _append(self, key: str, value: Any, dtype: Any = None) -> None:
        if key not in self.f:
            if isinstance(value, bytes):
                self.f.create_dataset(key, shape=(0,), maxshape=(None,), dtype=h5py.vlen_dtype(np.uint8), chunks=(64,))
            else:
                arr = np.asarray(value, dtype=dtype)
                self.f.create_dataset(key, shape=(0, *arr.shape), maxshape=(None, *arr.shape), dtype=arr.dtype,
                                      chunks=(16, *arr.shape))
        d = self.f[key]
        d.resize(self.n + 1, axis=0)
        d[self.n] = np.frombuffer(value, np.uint8) if isinstance(value, bytes) else value

    def add(self, t: float, state: np.ndarray, command: np.ndarray, rgb: np.ndarray | None, depth: np.ndarray | None,
            cloud: np.ndarray | None, inference_ms: float, period_ms: float) -> None:
        """One control step: the observed state, the command sent (observation gripper convention), the frame."""
        self._append("timestamps", np.float64(t))
        self._append("joint_action/vector", state.astype(np.float64))
        self._append("joint_action/positions", state[:-1].astype(np.float64))
        self._append("joint_action/gripper", np.float64(state[-1]))
        self._append("joint_action/velocities", np.zeros_like(state, dtype=np.float64))
        self._append("joint_action/control", command.astype(np.float64))
        self._append("endpose/ee_pos_quat", np.zeros(7))
        self._append("endpose/gripper", np.float64(state[-1]))
        if rgb is not None:
            self._append(f"observation/{self.camera}/rgb", encode_jpeg(rgb))
        if depth is not None:
            self._append(f"observation/{self.camera}/depth_raw", depth.reshape(*depth.shape[:2], 1).astype(np.float32))
        if cloud is not None:
            self._append("pointcloud", cloud.astype(np.float32))
        self._append("timing/inference_ms", np.float64(inference_ms))
        self._append("timing/period_ms", np.float64(period_ms))
        self.n += 1
        if time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def event(self, t: float, kind: str, detail: str) -> None:
        self.events.append({"t": t, "kind": kind, "detail": detail})
        self.f.attrs["events"] = json.dumps(self.events)

    def flush(self) -> None:
        self.f.flush()
        self.last_flush = time.monotonic()

    def close(self, complete: bool) -> None:
        self.f.attrs["complete"] = bool(complete and self.n > 0)
        self.f.attrs["frames"] = self.n
        self.f.close()
