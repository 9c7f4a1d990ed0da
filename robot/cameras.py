"""Cameras: a replay camera that plays back an episode's RGB-D frames (with the simulated arm), GELLO's ZMQ camera
node (robot/zmq_link.py), and Intel RealSense when `pyrealsense2` is installed (the `realsense` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from robot.formats import decode_jpeg


class ReplayCamera:
    """Frames of a converted episode file (observation/<camera>/rgb + depth_raw), in order, then the last one."""

    def __init__(self, episode: Path, camera: str) -> None:
        with h5py.File(episode, "r") as f:
            key = f"observation/{camera}"
            if f"{key}/rgb" not in f:
                msg = f"{episode}: no {key}/rgb to replay (cameras here: {sorted(f.get('observation', {}))})"
                raise KeyError(msg)
            self.rgb = [np.array(decode_jpeg(bytes(j))) for j in f[f"{key}/rgb"][()]]
            self.depth = f[f"{key}/depth_raw"][()][..., 0].astype(np.uint16) if f"{key}/depth_raw" in f else None
        self.i = 0

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        i = min(self.i, len(self.rgb) - 1)
        self.i += 1
        depth = self.depth[i] if self.depth is not None else np.zeros(self.rgb[i].shape[:2], np.uint16)
        return self.rgb[i], depth


class RealSenseCamera:
    """Color (RGB) and aligned z16 depth, 640 x 480 at 30 fps as GELLO's driver configures it."""

    def __init__(self, serial: str | None = None, width: int = 640, height: int = 480, fps: int = 30) -> None:
        try:
            import pyrealsense2 as rs  # type: ignore[import-not-found]
        except ImportError as e:
            msg = "camera kind realsense needs pyrealsense2: install the `realsense` extra in the image"
            raise RuntimeError(msg) from e
        self.rs: Any = rs
        self.pipeline = rs.pipeline()
        cfg = rs.config()
        if serial:
            cfg.enable_device(serial)
        cfg.enable_stream(rs.stream.color, width, height, rs.format.rgb8, fps)
        cfg.enable_stream(rs.stream.depth, width, height, rs.format.z16, fps)
        self.pipeline.start(cfg)
        self.align = rs.align(rs.stream.color)

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        frames = self.align.process(self.pipeline.wait_for_frames(1000))
        return np.asanyarray(frames.get_color_frame().get_data()), np.asanyarray(frames.get_depth_frame().get_data())
