"""`runner data`: converted episodes summarised from the files, and a preview PNG written whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from policies.data.episodes import EpisodeData, episode_path, write_episode
from policies.data.summary import preview, summarize
from robot.formats import encode_jpeg

REPO = Path(__file__).resolve().parents[3]


def episode(frames: int, seed: int) -> EpisodeData:
    rng = np.random.default_rng(seed)
    q = np.cumsum(rng.normal(0, 0.01, (frames, 7)), axis=0)
    grip = (np.arange(frames) > frames // 2).astype(np.float64)
    cloud = np.concatenate([rng.uniform([-0.5, -0.4, 0.8], [0.5, 0.4, 1.0], (frames, 64, 3)),
                            rng.uniform(0, 1, (frames, 64, 3))], axis=2).astype(np.float32)
    jpeg = encode_jpeg(np.full((24, 32, 3), 120, np.uint8))
    return EpisodeData(ee_pos_quat=np.zeros((frames, 7)), gripper=grip, positions=q, velocities=np.zeros((frames, 8)),
                       control=np.zeros((frames, 8)), timestamps=np.arange(frames) * 0.1, camera="front",
                       jpegs={"front": [jpeg] * frames}, depth=None, pointcloud=cloud, attrs={"camera": "front", "stride": 1})


def test_summary_and_preview(tmp_path: Path) -> None:
    root = tmp_path / "converted"
    for i, frames in enumerate((20, 30, 40)):
        write_episode(episode_path(root, "pick", "demo_clean", i), episode(frames, i))
    s = summarize(root / "pick")
    assert [e.frames for e in s.episodes] == [20, 30, 40] and s.episodes[0].cameras == ["front"]
    text = "\n".join(s.lines())
    assert "3 episodes, 90 frames (min 20, median 30, max 40 an episode), 8.7 s recorded" in text
    assert "actions: 8 dims" in text and "point clouds: 64 points a frame; x [-0.5" in text
    assert "conversion: camera=front, stride=1" in text
    png = preview(s, tmp_path / "preview.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000
    assert summarize(tmp_path / "nothing").lines()[0].endswith("no converted episodes (run `runner convert JOB` first)")


def test_runner_data_on_a_job(tmp_path: Path) -> None:
    write_episode(episode_path(tmp_path / "conv", "pick", "demo_clean", 0), episode(12, 0))
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "j.yaml").write_text("name: j\npolicy: dp3\ntask: pick\ndata: {converted: conv}\n")
    r = subprocess.run([sys.executable, "-m", "runner.cli", "data", "j"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "1 episodes, 12 frames" in r.stdout and (tmp_path / "runs" / "j" / "data_preview.png").is_file()
