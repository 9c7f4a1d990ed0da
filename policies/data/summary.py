"""`runner data JOB`: what a conversion produced, checked by reading it and by looking at it. The converted
episode HDF5 (the lab's layout, what every policy converts from) summarised — episodes, frames, duration,
action dims and ranges, cameras, point-cloud extents — and a preview PNG: a point-cloud frame seen from above
and from the side, the joint and gripper trajectories of the first episode, and its first camera frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from policies.data.episodes import read_attrs


@dataclass
class EpisodeFacts:
    path: Path
    frames: int
    seconds: float | None
    action_dim: int
    cameras: list[str]
    points: int | None  # points a frame, when the episode holds point clouds


@dataclass
class DataSummary:
    folder: Path
    episodes: list[EpisodeFacts] = field(default_factory=list)
    action_min: np.ndarray | None = None
    action_max: np.ndarray | None = None
    cloud_min: np.ndarray | None = None  # xyz over every stored point of every episode
    cloud_max: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The summary as a user reads it."""
        if not self.episodes:
            return [f"{self.folder}: no converted episodes (run `runner convert JOB` first)"]
        frames = [e.frames for e in self.episodes]
        secs = [e.seconds for e in self.episodes if e.seconds is not None]
        first = self.episodes[0]
        out = [f"{self.folder}: {len(self.episodes)} episodes, {sum(frames)} frames "
               f"(min {min(frames)}, median {int(np.median(frames))}, max {max(frames)} an episode)"
               + (f", {sum(secs):.1f} s recorded" if secs else ""),
               f"actions: {first.action_dim} dims (joints + gripper); cameras: {', '.join(first.cameras) or 'none'}"]
        if self.action_min is not None and self.action_max is not None:
            ranges = ", ".join(f"[{a:.2f}, {b:.2f}]" for a, b in zip(self.action_min, self.action_max, strict=True))
            out.append(f"action ranges: {ranges}")
        if self.cloud_min is not None and self.cloud_max is not None:
            lo, hi = self.cloud_min, self.cloud_max
            out.append(f"point clouds: {first.points} points a frame; x [{lo[0]:.3f}, {hi[0]:.3f}] y [{lo[1]:.3f}, "
                       f"{hi[1]:.3f}] z [{lo[2]:.3f}, {hi[2]:.3f}] (m, the conversion's frame)")
        keys = ("camera", "stride", "keyframes", "binarize_gripper", "action_source")
        settings = {k: self.attrs[k] for k in keys if k in self.attrs}
        if settings:
            out.append("conversion: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        return out


def episode_files(folder: Path) -> list[Path]:
    """The converted episodes under `folder` (any depth), in episode order."""
    def index(p: Path) -> tuple[str, int]:
        digits = "".join(c for c in p.stem if c.isdigit())
        return (str(p.parent), int(digits) if digits else 0)

    return sorted((p for p in folder.rglob("episode*.hdf5") if not p.name.startswith(".")), key=index)


def summarize(folder: Path) -> DataSummary:
    out = DataSummary(folder)
    for path in episode_files(folder):
        with h5py.File(path, "r") as f:
            if "joint_action/vector" not in f:
                continue  # another layout (RDT's episodes): summarised from the lab's episodes only
            action = f["joint_action/vector"][()]
            stamps = f["timestamps"][()] if "timestamps" in f else None
            cams = sorted(f["observation"]) if "observation" in f else []
            cloud = f.get("pointcloud")
            points = int(cloud.shape[1]) if cloud is not None else None
            if cloud is not None:
                xyz = cloud[()][..., :3].reshape(-1, 3)
                out.cloud_min = xyz.min(0) if out.cloud_min is None else np.minimum(out.cloud_min, xyz.min(0))
                out.cloud_max = xyz.max(0) if out.cloud_max is None else np.maximum(out.cloud_max, xyz.max(0))
        secs = float(stamps[-1] - stamps[0]) if stamps is not None and len(stamps) > 1 else None
        out.episodes.append(EpisodeFacts(path, len(action), secs, int(action.shape[1]), cams, points))
        out.action_min = action.min(0) if out.action_min is None else np.minimum(out.action_min, action.min(0))
        out.action_max = action.max(0) if out.action_max is None else np.maximum(out.action_max, action.max(0))
    if out.episodes:
        out.attrs = read_attrs(out.episodes[0].path)
    return out


def preview(summary: DataSummary, png: Path) -> Path | None:
    """The first episode's middle point-cloud frame (from above and from the side, coloured by its RGB), its joint
    and gripper trajectories, and its first camera frame. None when there is no episode."""
    if not summary.episodes:
        return None
    from policies.curves import pyplot, save_figure
    from robot.formats import decode_jpeg

    ep = summary.episodes[0]
    with h5py.File(ep.path, "r") as f:
        action = f["joint_action/vector"][()]
        mid = len(action) // 2
        cloud = f["pointcloud"][mid] if "pointcloud" in f else None
        rgb = decode_jpeg(bytes(f[f"observation/{ep.cameras[0]}/rgb"][0])) if ep.cameras else None
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    _cloud_panels(axes[0][0], axes[0][1], cloud, mid)
    joints = axes[1][0]
    for d in range(action.shape[1] - 1):
        joints.plot(action[:, d], linewidth=1.1, label=f"joint {d + 1}")
    joints.set_xlabel("frame")
    joints.set_ylabel("rad")
    grip = joints.twinx()
    grip.plot(action[:, -1], color="black", linestyle="--", linewidth=1.2, label="gripper")
    grip.set_ylabel("gripper (0 closed, 1 open)")
    joints.legend(fontsize=7, ncol=4, loc="upper left")
    joints.set_title(f"{ep.path.name}: joint targets and gripper", fontsize=9)
    cam = axes[1][1]
    if rgb is not None:
        cam.imshow(rgb)
        cam.set_title(f"camera {ep.cameras[0]}, frame 0 ({rgb.shape[1]}x{rgb.shape[0]})", fontsize=9)
    cam.axis("off")
    fig.suptitle(f"{summary.folder}: {len(summary.episodes)} episodes", fontsize=10)
    return save_figure(fig, png)


def _cloud_panels(top: Any, side: Any, cloud: np.ndarray | None, frame: int) -> None:
    if cloud is None:
        for ax in (top, side):
            ax.text(0.5, 0.5, "no point clouds in this episode", ha="center", va="center")
            ax.axis("off")
        return
    colour = np.clip(cloud[:, 3:6], 0, 1) if cloud.shape[1] >= 6 and cloud[:, 3:6].max() <= 1.0 else (
        np.clip(cloud[:, 3:6] / 255.0, 0, 1) if cloud.shape[1] >= 6 else None)
    for ax, (i, j), name in ((top, (0, 1), "from above (x, y)"), (side, (0, 2), "from the side (x, z)")):
        if colour is not None:
            ax.scatter(cloud[:, i], cloud[:, j], s=6, c=colour)
        else:
            ax.scatter(cloud[:, i], cloud[:, j], s=6, c=cloud[:, 2], cmap="viridis")
        ax.set_xlabel("xyz"[i] + " (m)")
        ax.set_ylabel("xyz"[j] + " (m)")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"point cloud, frame {frame}, {name}: {len(cloud)} points", fontsize=9)
