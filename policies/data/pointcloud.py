"""Depth + intrinsics -> coloured point clouds (xyzrgb) of N points, for many frames at once.

Back-projection, extrinsics and the crop are one tensor expression over a batch of frames; the down-sampling
is farthest-point sampling (FPS), batched over frames, deterministic for a seed, on a GPU when there is one.
By default each frame is first reduced to one point per voxel (`presample="voxel"`): FPS then works on
thousands of points instead of a 480x640 frame's ~300k, which is where the time goes. `presample="none"`
runs exact FPS on every valid point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from policies.convert_options import CloudOptions, Intrinsics
from runner.spec.models import default_of


@dataclass(frozen=True)
class CloudSpec:
    fx: float
    fy: float
    cx: float
    cy: float
    depth_scale: float = default_of(Intrinsics, "depth_scale")  # metres per depth unit (RealSense z16: 1 mm)
    num_points: int = default_of(CloudOptions, "num_points")
    extrinsics: tuple[tuple[float, ...], ...] | None = None  # 4x4 camera -> robot base
    crop_min: tuple[float, float, float] | None = None
    crop_max: tuple[float, float, float] | None = None
    presample: Literal["voxel", "none"] = default_of(CloudOptions, "presample")
    voxel_size: float = default_of(CloudOptions, "voxel_size")
    presample_factor: int = 8  # after the voxel grid, at most this many times num_points go into FPS
    seed: int = default_of(CloudOptions, "seed")


class TooFewPointsError(ValueError):
    """A frame has fewer valid points (after the crop) than the cloud needs."""

    def __init__(self, frame: int, found: int, needed: int) -> None:
        self.frame, self.found, self.needed = frame, found, needed
        super().__init__(f"frame {frame}: {found} valid points after depth>0 and the crop, {needed} needed")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def backproject(depth: torch.Tensor, spec: CloudSpec) -> torch.Tensor:
    """(B,H,W) raw depth -> (B,H,W,3) xyz in metres, camera frame (x right, y down, z forward)."""
    _, h, w = depth.shape
    z = depth.to(torch.float32) * spec.depth_scale
    v, u = torch.meshgrid(torch.arange(h, device=depth.device, dtype=torch.float32),
                          torch.arange(w, device=depth.device, dtype=torch.float32), indexing="ij")
    x = (u - spec.cx) / spec.fx * z
    y = (v - spec.cy) / spec.fy * z
    return torch.stack((x, y, z), dim=-1)


def _transform(xyz: torch.Tensor, spec: CloudSpec) -> torch.Tensor:
    if spec.extrinsics is None:
        return xyz
    t = torch.tensor(spec.extrinsics, dtype=torch.float32, device=xyz.device)
    return xyz @ t[:3, :3].T + t[:3, 3]


def _valid(xyz: torch.Tensor, depth: torch.Tensor, spec: CloudSpec) -> torch.Tensor:
    mask = depth > 0
    if spec.crop_min is not None:
        mask &= (xyz >= torch.tensor(spec.crop_min, device=xyz.device)).all(-1)
    if spec.crop_max is not None:
        mask &= (xyz <= torch.tensor(spec.crop_max, device=xyz.device)).all(-1)
    return mask


def clouds(depth: np.ndarray, rgb: np.ndarray, spec: CloudSpec, device: torch.device | None = None,
           first_frame: int = 0) -> np.ndarray:
    """(B,H,W[,1]) depth and (B,H,W,3) uint8 RGB -> (B, num_points, 6) float32 xyzrgb (rgb in [0, 1]).

    Raises TooFewPointsError naming the frame (offset by `first_frame`) that cannot give num_points.
    """
    dev = device or default_device()
    raw = depth.reshape(depth.shape[0], depth.shape[1], depth.shape[2])
    # uint16 (z16) has few torch kernels: widen before it reaches the device.
    d = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.int32 if raw.dtype == np.uint16 else raw.dtype)).to(dev)
    xyz = _transform(backproject(d, spec), spec)
    mask = _valid(xyz, d, spec)
    frame, flat = _where(mask)
    counts = torch.bincount(frame, minlength=d.shape[0])
    short = torch.nonzero(counts < spec.num_points)
    if len(short):
        f = int(short[0, 0])
        raise TooFewPointsError(first_frame + f, int(counts[f]), spec.num_points)
    gen = torch.Generator(device="cpu").manual_seed(spec.seed + first_frame)
    if spec.presample == "voxel":
        # A cheap random cut first (the voxel grid sorts every point it sees), then one point a voxel.
        flat, frame = _cap(flat, frame, d.shape[0], spec.num_points * spec.presample_factor * 4, gen)
    col = torch.from_numpy(np.ascontiguousarray(rgb)).to(dev).reshape(-1, 3)
    pts = torch.cat((xyz.reshape(-1, 3)[flat], col[flat].to(torch.float32) / 255.0), dim=-1)
    if spec.presample == "voxel":
        pts, frame = _voxel_reduce(pts, frame, counts, spec)
        pts, frame = _cap(pts, frame, d.shape[0], spec.num_points * spec.presample_factor, gen)
    padded, sizes = _pad(pts, frame, d.shape[0])
    start = (torch.rand(d.shape[0], generator=gen) * sizes.cpu()).long().to(dev)
    idx = farthest_point_sample(padded[..., :3], spec.num_points, start)
    out = torch.gather(padded, 1, idx.unsqueeze(-1).expand(-1, -1, 6))
    return out.cpu().numpy().astype(np.float32, copy=False)


def _voxel_reduce(pts: torch.Tensor, frame: torch.Tensor, counts: torch.Tensor, spec: CloudSpec
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first point of every (frame, voxel); frames left with fewer than num_points keep all points."""
    cell = torch.floor(pts[:, :3] / spec.voxel_size).long()
    cell -= cell.min(0).values
    span = cell.max(0).values + 1
    key = ((frame * span[0] + cell[:, 0]) * span[1] + cell[:, 1]) * span[2] + cell[:, 2]
    _, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(key), dtype=torch.long, device=pts.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(key), device=pts.device), reduce="amin")
    keep = torch.zeros(len(key), dtype=torch.bool, device=pts.device)
    keep[first] = True
    kept = torch.bincount(frame[keep], minlength=len(counts))
    keep |= (kept < spec.num_points)[frame]  # too coarse for this frame: use every point
    return pts[keep], frame[keep]


def _where(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame index and flat (frame*H*W + pixel) index of every True in a (B,H,W) mask."""
    flat = torch.nonzero(mask.reshape(-1)).squeeze(1)
    return flat // (mask.shape[1] * mask.shape[2]), flat


def _cap(pts: torch.Tensor, frame: torch.Tensor, n_frames: int, cap: int, gen: torch.Generator
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `cap` points a frame, chosen uniformly at random (seeded): FPS cost grows with the points it sees.

    `pts` is any per-point tensor (coordinates, or pixel indices), grouped by frame as `frame` is."""
    sizes = torch.bincount(frame, minlength=n_frames).tolist()
    if max(sizes) <= cap:
        return pts, frame
    keep, start = [], 0
    for size in sizes:
        pick = torch.randperm(size, generator=gen)[:cap] if size > cap else torch.arange(size)
        keep.append(torch.sort(pick).values + start)
        start += size
    index = torch.cat(keep).to(pts.device)
    return pts[index], frame[index]


def _pad(pts: torch.Tensor, frame: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points grouped by frame into (B, M, 6), short frames padded with copies of their first point."""
    sizes = torch.bincount(frame, minlength=n_frames)
    m = int(sizes.max())
    starts = torch.cumsum(sizes, 0) - sizes
    order = torch.argsort(frame, stable=True)
    pts, frame = pts[order], frame[order]
    slot = torch.arange(len(frame), device=pts.device) - starts[frame]
    out = pts[starts].unsqueeze(1).expand(n_frames, m, pts.shape[1]).clone()
    out[frame, slot] = pts
    return out, sizes


def farthest_point_sample(xyz: torch.Tensor, k: int, start: torch.Tensor) -> torch.Tensor:
    """(B,M,3) points -> (B,k) indices of farthest-point samples, beginning at `start` (B,)."""
    b, m, _ = xyz.shape
    idx = torch.empty((b, k), dtype=torch.long, device=xyz.device)
    dist = torch.full((b, m), float("inf"), device=xyz.device)
    d = torch.empty((b, m), device=xyz.device)
    tmp = torch.empty((b, m), device=xyz.device)
    coords = [xyz[..., c].contiguous() for c in range(3)]  # (B,M) each: unit-stride passes, no (B,M,3) temps
    rows = torch.arange(b, device=xyz.device)
    far = start
    for i in range(k):
        idx[:, i] = far
        for c, coord in enumerate(coords):
            torch.sub(coord, coord[rows, far].unsqueeze(1), out=tmp)
            if c == 0:
                torch.mul(tmp, tmp, out=d)
            else:
                d.addcmul_(tmp, tmp)
        torch.minimum(dist, d, out=dist)
        far = torch.argmax(dist, dim=1)
    return idx
