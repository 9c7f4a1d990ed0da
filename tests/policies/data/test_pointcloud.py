import numpy as np
import pytest
import torch

from policies.data.pointcloud import CloudSpec, TooFewPointsError, clouds, farthest_point_sample

DEPTH = np.full((1, 4, 4), 1000, np.uint16)  # 1 m everywhere (1 mm units)
RGB = np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3)
SPEC = CloudSpec(fx=2.0, fy=4.0, cx=1.5, cy=1.5, depth_scale=0.001, num_points=16, presample="none")


def as_set(points: np.ndarray) -> set[tuple[float, ...]]:
    return {tuple(np.round(p, 5)) for p in points}


def test_back_projection_matches_hand_computed_points() -> None:
    out = clouds(DEPTH, RGB, SPEC)
    assert out.shape == (1, 16, 6) and out.dtype == np.float32
    expected = np.array([[(u - 1.5) / 2.0, (v - 1.5) / 4.0, 1.0, *(RGB[0, v, u] / 255.0)]
                         for v in range(4) for u in range(4)], dtype=np.float32)
    assert as_set(out[0]) == as_set(expected)  # 16 of 16: every point exactly once


def test_extrinsics_crop_and_invalid_depth() -> None:
    depth = DEPTH.copy()
    depth[0, 0, 0] = 0  # invalid pixel
    shift = ((1, 0, 0, 10.0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1))
    spec = CloudSpec(fx=2.0, fy=4.0, cx=1.5, cy=1.5, num_points=4, presample="none", extrinsics=shift,
                     crop_min=(10.0, -1.0, 0.0), crop_max=(11.0, 1.0, 2.0))
    out = clouds(depth, RGB, spec)
    xs = out[0, :, 0]
    assert (xs >= 10.0).all()  # translated, and the crop kept only x >= 0 in camera terms
    assert set(np.round(xs - 10.0, 5)) <= {0.25, 0.75}


def test_too_few_points_names_the_frame() -> None:
    depth = np.concatenate([DEPTH, np.zeros_like(DEPTH)])
    with pytest.raises(TooFewPointsError, match="frame 8: 0 valid points"):
        clouds(depth, np.concatenate([RGB, RGB]), SPEC, first_frame=7)


def test_fps_properties() -> None:
    rng = np.random.default_rng(0)
    depth = rng.integers(800, 1200, (3, 48, 64)).astype(np.uint16)
    rgb = rng.integers(0, 255, (3, 48, 64, 3)).astype(np.uint8)
    for presample in ("none", "voxel"):
        spec = CloudSpec(fx=50, fy=50, cx=32, cy=24, num_points=128, presample=presample, voxel_size=0.01, seed=3)
        a, b = clouds(depth, rgb, spec), clouds(depth, rgb, spec)
        assert a.shape == (3, 128, 6) and np.array_equal(a, b)  # deterministic for a seed
        full = clouds(depth, rgb, CloudSpec(fx=50, fy=50, cx=32, cy=24, num_points=48 * 64, presample="none"))
        for f in range(3):
            assert as_set(a[f]) <= as_set(full[f])  # every sampled point is an input point
            assert len(as_set(a[f])) == 128  # no repeats


def test_fps_spreads_points_more_than_random() -> None:
    gen = torch.Generator().manual_seed(0)
    pts = torch.rand(1, 2000, 3, generator=gen)
    idx = farthest_point_sample(pts, 32, torch.zeros(1, dtype=torch.long))
    chosen = pts[0, idx[0]]
    rand = pts[0, :32]
    def min_gap(x: torch.Tensor) -> float:
        d = torch.cdist(x, x) + torch.eye(len(x)) * 10
        return float(d.min())
    assert min_gap(chosen) > 2 * min_gap(rand)
