"""Small deterministic Franka-like demonstrations in GELLO's recording format, for the sample job and tests.

Each episode: the arm reaches a cube on a table, closes the gripper, carries the cube sideways and opens the
gripper. Every control step is one pickle named by its ISO timestamp, in `<raw>/<agent>/<MMDD_HHMMSS>/`,
with `joint_positions` (8), `joint_velocities` (a copy of the positions, as GELLO's Panda driver writes),
`ee_pos_quat` (zeros, likewise), `gripper_position` (1), `control` (8; gripper 1.0 = closed, the Panda
command convention) and `<camera>_rgb` (H,W,3 uint8) / `<camera>_depth` (H,W,1 uint16 z16, 1 mm units).
"""

from __future__ import annotations

import pickle
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

# Intrinsics of the sample camera (the sample job's convert step uses the same numbers).
WIDTH, HEIGHT = 160, 120
FX = FY = 120.0
CX, CY = 80.0, 60.0
TABLE_MM = 900
CUBE_MM = 820

HOME = np.array([0.0, -0.6, 0.0, -2.2, 0.0, 1.6, 0.8])


def episode_arrays(index: int, steps: int = 50, camera: str = "front") -> list[dict[str, np.ndarray]]:
    """The step dicts of sample episode `index` (deterministic)."""
    rng = np.random.default_rng(1000 + index)
    start_u, end_u = 45 + 6 * index, 115 - 4 * index
    out = []
    for t in range(steps):
        phase = t / max(1, steps - 1)
        carry = np.clip((phase - 0.35) / 0.4, 0.0, 1.0)  # the cube moves between 35% and 75% of the episode
        cube_u = start_u + (end_u - start_u) * carry
        closed = 0.3 <= phase < 0.8
        gripper_obs = 0.05 if closed else 1.0  # GELLO Panda: width / 0.09, 1.0 = open
        joints = HOME + np.array([0.6 * carry, 0.25 * np.sin(np.pi * phase), 0.1 * index, 0.3 * phase, 0.0,
                                  0.2 * carry, 0.0]) + rng.normal(0, 0.002, 7)
        qpos = np.concatenate([joints, [gripper_obs]]).astype(np.float64)
        nxt = min(t + 1, steps - 1) / max(1, steps - 1)
        closed_next = 0.3 <= nxt < 0.8
        control = qpos.copy()
        control[:7] += np.array([0.6, 0.25, 0.0, 0.3, 0.0, 0.2, 0.0]) / steps
        control[7] = 1.0 if closed_next else 0.0  # Panda command: 1.0 = closed
        rgb, depth = _render(cube_u, rng)
        out.append({
            "joint_positions": qpos, "joint_velocities": qpos.copy(), "ee_pos_quat": np.zeros(7),
            "gripper_position": np.array([gripper_obs]), "control": control,
            f"{camera}_rgb": rgb, f"{camera}_depth": depth,
        })
    return out


def _render(cube_u: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH]
    depth = np.full((HEIGHT, WIDTH), TABLE_MM, np.float64) + 0.4 * (v - CY) + rng.normal(0, 1.0, (HEIGHT, WIDTH))
    rgb = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    rgb[...] = (150, 120, 90)  # table
    cube = (np.abs(u - cube_u) < 12) & (np.abs(v - 70) < 12)
    depth[cube] = CUBE_MM
    rgb[cube] = (200, 30, 30)
    depth[:4, :] = 0  # a band of invalid depth, as real sensors have
    return rgb, np.clip(depth, 0, 65535).astype(np.uint16)[..., None]


def generate(raw: Path, episodes: int = 3, steps: int = 50, camera: str = "front", agent: str = "gello") -> list[Path]:
    """Write the sample episodes under `raw` (atomically per file); returns the episode folders."""
    base = datetime(2025, 10, 30, 14, 0, 0)
    folders = []
    for e in range(episodes):
        start = base + timedelta(minutes=5 * e)
        folder = raw / agent / start.strftime("%m%d_%H%M%S")
        folder.mkdir(parents=True, exist_ok=True)
        for t, step in enumerate(episode_arrays(e, steps, camera)):
            stamp = start + timedelta(seconds=t / 10)  # 10 Hz control
            path = folder / f"{stamp.isoformat(timespec='microseconds')}.pkl"
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(step, f)
            tmp.replace(path)
        folders.append(folder)
    return folders


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "sample_data/raw/sample_pick")
    for f in generate(target):
        print(f)
