"""The convert step through the runner (local executor): sample generation, check mode, the published outputs."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import zarr

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_sample_dp3_convert_end_to_end_and_check(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    shutil.copy(REPO / "jobs" / "sample_dp3.yaml", tmp_path / "jobs")
    r = run("convert", "sample_dp3", "--executor", "local", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "generating sample demonstrations" in r.stderr
    buf = zarr.open(str(tmp_path / "sample_data/converted/sample_pick-demo_clean-3.zarr"), "r")
    assert buf["data/point_cloud"].shape == (147, 256, 6) and buf["meta/episode_ends"][:].tolist() == [49, 98, 147]
    # Break one step's depth: --check names it and writes nothing; convert refuses and keeps the old output.
    victim = sorted((tmp_path / "sample_data/raw").rglob("*.pkl"))[7]
    step = pickle.loads(victim.read_bytes())
    del step["front_depth"]
    victim.write_bytes(pickle.dumps(step))
    before = sorted(p.name for p in (tmp_path / "sample_data/converted").iterdir())
    r = run("convert", "sample_dp3", "--check", "--executor", "local", cwd=tmp_path)
    assert r.returncode == 1 and "step 7: front_depth: missing" in r.stdout
    r = run("convert", "sample_dp3", "--executor", "local", cwd=tmp_path)
    assert r.returncode == 1 and "nothing was written" in r.stderr + r.stdout
    assert sorted(p.name for p in (tmp_path / "sample_data/converted").iterdir()) == before
