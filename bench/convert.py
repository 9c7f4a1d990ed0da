"""Point-cloud conversion speed: 480x640 RGB-D frames -> 1024-point xyzrgb clouds.

    python bench/convert.py [--frames 48] [--baseline-frames 3] [--device cpu|cuda]

Measured in the same run on the same synthetic frames (a table with objects, sensor noise, invalid pixels):
  ours (voxel)   policies.data.pointcloud.clouds, batched frames, voxel grid + cap before exact FPS (the default)
  ours (exact)   the same with presample="none": exact FPS over every valid point
  baseline       the way upstream scripts do it: Python loop over frames, numpy back-projection and crop,
                 numpy FPS per frame (one argmax per sampled point over all points)
  open3d         per-frame open3d: back-projection, crop, farthest_point_down_sample(1024) (if installed)
Episodes/s assume 300-frame episodes (the lab's episodes are 300-350 frames).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from policies.data.pointcloud import CloudSpec, clouds

H, W = 480, 640
FX = FY = 606.0
CX, CY = 320.0, 240.0
CROP_MIN, CROP_MAX = (-0.6, -0.45, 0.3), (0.6, 0.45, 1.3)
EPISODE_FRAMES = 300


def frames(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W]
    base = 1100.0 + 0.6 * (v - CY)  # a table tilted away from the camera
    depth = np.empty((n, H, W), np.uint16)
    rgb = np.empty((n, H, W, 3), np.uint8)
    for i in range(n):
        d = base + rng.normal(0, 2.0, (H, W))
        img = np.empty((H, W, 3), np.uint8)
        img[...] = (140, 110, 80)
        for k in range(3):  # three objects moving across the table
            cu, cv = 200 + 120 * k + 3 * i, 260 + 20 * k
            box = (np.abs(u - cu) < 45) & (np.abs(v - cv) < 35)
            d[box] = 950 - 40 * k
            img[box] = (60 * k, 200 - 50 * k, 40)
        d[rng.random((H, W)) < 0.03] = 0  # dropouts
        depth[i] = np.clip(d, 0, 65535).astype(np.uint16)
        rgb[i] = img
    return depth, rgb


def baseline(depth: np.ndarray, rgb: np.ndarray, k: int = 1024, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W]
    out = []
    for f in range(len(depth)):
        z = depth[f].astype(np.float32) * 0.001
        x = (u - CX) / FX * z
        y = (v - CY) / FY * z
        pts = np.stack([x, y, z], -1).reshape(-1, 3)
        col = rgb[f].reshape(-1, 3).astype(np.float32) / 255.0
        keep = (z.reshape(-1) > 0) & (pts >= CROP_MIN).all(1) & (pts <= CROP_MAX).all(1)
        pts, col = pts[keep], col[keep]
        idx = np.zeros(k, dtype=np.int64)
        dist = np.full(len(pts), np.inf, dtype=np.float32)
        far = int(rng.integers(len(pts)))
        for i in range(k):
            idx[i] = far
            dist = np.minimum(dist, ((pts - pts[far]) ** 2).sum(1))
            far = int(np.argmax(dist))
        out.append(np.concatenate([pts[idx], col[idx]], 1))
    return np.stack(out)


def open3d_frames(depth: np.ndarray, rgb: np.ndarray, k: int = 1024) -> float | None:
    try:
        import open3d as o3d
    except ImportError:
        return None
    v, u = np.mgrid[0:H, 0:W]
    box = o3d.geometry.AxisAlignedBoundingBox(np.array(CROP_MIN), np.array(CROP_MAX))
    t0 = time.perf_counter()
    for f in range(len(depth)):
        z = depth[f].astype(np.float64) * 0.001
        pts = np.stack([(u - CX) / FX * z, (v - CY) / FY * z, z], -1).reshape(-1, 3)
        valid = z.reshape(-1) > 0
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts[valid]))
        pcd.colors = o3d.utility.Vector3dVector(rgb[f].reshape(-1, 3)[valid] / 255.0)
        pcd.crop(box).farthest_point_down_sample(k)
    return len(depth) / (time.perf_counter() - t0)


def rate(fn: object, n: int) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--baseline-frames", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--chunk", type=int, default=16)
    args = ap.parse_args()
    import torch

    dev = torch.device(args.device) if args.device else None
    depth, rgb = frames(args.frames)
    spec = CloudSpec(FX, FY, CX, CY, num_points=1024, crop_min=CROP_MIN, crop_max=CROP_MAX)
    exact = CloudSpec(FX, FY, CX, CY, num_points=1024, crop_min=CROP_MIN, crop_max=CROP_MAX, presample="none")

    def ours(s: CloudSpec, n: int) -> None:
        for i in range(0, n, args.chunk):
            clouds(depth[i:i + args.chunk], rgb[i:i + args.chunk], s, device=dev, first_frame=i)
            if dev is not None and dev.type == "cuda":
                torch.cuda.synchronize()

    ours(spec, min(args.chunk, args.frames))  # warm-up (allocator, kernels)
    valid = int(((depth[0] > 0)).sum())
    r_voxel = rate(lambda: ours(spec, args.frames), args.frames)
    n_exact = min(args.frames, 2 * args.chunk if dev is not None and dev.type == "cuda" else 4)
    r_exact = rate(lambda: ours(exact, n_exact), n_exact)
    r_base = rate(lambda: baseline(depth[:args.baseline_frames], rgb[:args.baseline_frames]), args.baseline_frames)
    r_o3d = open3d_frames(depth[:args.baseline_frames], rgb[:args.baseline_frames])
    device = str(dev or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"480x640 RGB-D -> 1024-point xyzrgb, device {device}, torch threads {torch.get_num_threads()}, "
          f"~{valid} valid pixels a frame")
    print(f"{'pipeline':<34} {'frames/s':>9} {'episodes/s':>11} {'vs baseline':>12}")
    rows = [("ours: voxel grid + cap, then FPS", r_voxel), ("ours: exact FPS on all points", r_exact),
            ("baseline: per-frame numpy FPS", r_base)]
    if r_o3d is not None:
        rows.append(("open3d per frame (reference)", r_o3d))
    for name, r in rows:
        print(f"{name:<34} {r:9.2f} {r / EPISODE_FRAMES:11.4f} {r / r_base:11.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
