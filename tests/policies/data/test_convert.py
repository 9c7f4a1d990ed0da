"""pkl -> episode HDF5 -> DP3 zarr: values, dtypes, shapes, the shift rule, checks, resume, atomic publish."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from policies.data.convert import ConversionError, ConvertOptions, check, convert
from policies.data.episodes import read_attrs
from policies.data.pointcloud import CloudSpec
from policies.data.sample import CX, CY, FX, FY, episode_arrays, generate
from policies.data.transform import TimeOptions
from policies.dp3.zarr_buffer import BufferError, write_buffer
from robot.formats import decode_jpeg

REPO = Path(__file__).resolve().parents[3]
OPTS = ConvertOptions(task="pick", cloud=CloudSpec(FX, FY, CX, CY, num_points=64), workers=1,
                      time=TimeOptions(binarize_gripper=True), instructions=("pick the cube",))


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    root = tmp_path_factory.mktemp("conv")
    generate(root / "raw", episodes=2, steps=12)
    report = convert(root / "raw", root / "out", OPTS)
    return root / "raw", root / "out", report.episodes


def test_episode_hdf5_layout_and_values(converted: tuple[Path, Path, list[Path]]) -> None:
    _, out, files = converted
    assert [f.relative_to(out).as_posix() for f in files] == ["pick/demo_clean/data/episode0.hdf5",
                                                               "pick/demo_clean/data/episode1.hdf5"]
    raw = episode_arrays(0, steps=12)
    with h5py.File(files[0], "r") as f:
        assert f["joint_action/positions"].shape == (12, 7) and f["joint_action/positions"].dtype == np.float64
        assert f["joint_action/velocities"].shape == (12, 8) and f["endpose/ee_pos_quat"].shape == (12, 7)
        np.testing.assert_array_equal(f["joint_action/positions"][()], np.stack([s["joint_positions"][:7] for s in raw]))
        grip = f["joint_action/gripper"][()]
        assert set(np.unique(grip)) <= {0.0, 1.0}  # binarized
        np.testing.assert_array_equal(f["joint_action/vector"][()][:, -1], grip)
        assert f["observation/front/rgb"].dtype.kind == "S" and f["observation/front/rgb"].shape == (12,)
        assert decode_jpeg(f["observation/front/rgb"][0]).shape == (120, 160, 3)
        depth = np.stack([s["front_depth"][..., 0] for s in raw])
        np.testing.assert_array_equal(f["observation/front/depth_raw"][()][..., 0], depth)
        assert f["pointcloud"].shape == (12, 64, 6) and f["pointcloud"].dtype == np.float32
    attrs = read_attrs(files[0])
    assert attrs["binarize_gripper"] is True or attrs["binarize_gripper"] == 1
    assert attrs["action_source"] == "next_state" and attrs["pointcloud"]["num_points"] == 64
    assert (out / "pick/demo_clean/instructions/episode1.json").read_text().count("pick the cube") == 1


def test_dp3_zarr_reads_as_upstream_does(converted: tuple[Path, Path, list[Path]], tmp_path: Path) -> None:
    import zarr

    _, _, files = converted
    buf = write_buffer(files, tmp_path / "pick-demo_clean-2.zarr")
    root = zarr.open(str(buf.path), "r")
    assert {"data", "meta"} <= set(root.group_keys())
    ends = root["meta/episode_ends"][:]
    assert ends.dtype == np.int64 and ends.tolist() == [11, 22]  # T-1 samples per episode
    for key, shape in (("point_cloud", (22, 64, 6)), ("state", (22, 8)), ("action", (22, 8))):
        assert root["data"][key].shape == shape and root["data"][key].dtype == np.float32
        assert root["data"][key].compressor.cname == "zstd"
    with h5py.File(files[1], "r") as f:
        vec = f["joint_action/vector"][()].astype(np.float32)
    state, action = root["data/state"][11:22], root["data/action"][11:22]
    np.testing.assert_array_equal(state, vec[:-1])
    np.testing.assert_array_equal(action, vec[1:])  # action[t] == state[t+1]
    # upstream ReplayBuffer.copy_from_path: zarr.open + copy_store into memory (zarr 2 API)
    mem = zarr.MemoryStore()
    zarr.copy_store(zarr.DirectoryStore(str(buf.path)), mem)
    assert zarr.group(store=mem)["data/state"].shape == (22, 8)
    assert root.attrs["shape_meta"]["obs"]["agent_pos"]["shape"] == [8]
    import yaml

    side = yaml.safe_load((tmp_path / "pick-demo_clean-2.yaml").read_text())
    assert side["shape_meta"]["obs"]["point_cloud"]["shape"] == [64, 6] and side["zarr_path"] == "pick-demo_clean-2.zarr"


def test_buffer_refuses_episodes_without_point_clouds(converted: tuple[Path, Path, list[Path]], tmp_path: Path) -> None:
    _, _, files = converted
    bad = tmp_path / "episode9.hdf5"
    bad.write_bytes(files[0].read_bytes())
    with h5py.File(bad, "a") as f:
        del f["pointcloud"]
    with pytest.raises(BufferError, match="pointcloud: missing"):
        write_buffer([files[0], bad], tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_check_lists_problems_and_convert_writes_nothing(tmp_path: Path) -> None:
    generate(tmp_path / "raw", episodes=2, steps=4)
    victim = sorted((tmp_path / "raw").rglob("*.pkl"))[5]
    import pickle

    step = pickle.loads(victim.read_bytes())
    del step["front_depth"]
    victim.write_bytes(pickle.dumps(step))
    problems = check(tmp_path / "raw", OPTS)
    assert len(problems) == 1 and "step 1: front_depth: missing" in str(problems[0])
    with pytest.raises(ConversionError, match="nothing was written"):
        convert(tmp_path / "raw", tmp_path / "out", OPTS)
    assert not (tmp_path / "out").exists()


SCRIPT = """
import sys
from pathlib import Path
from policies.data.convert import ConvertOptions, convert
from policies.data.pointcloud import CloudSpec
from policies.data.sample import CX, CY, FX, FY
if __name__ == "__main__":
    opts = ConvertOptions(task="pick", cloud=CloudSpec(FX, FY, CX, CY, num_points=64), workers=1)
    r = convert(Path(sys.argv[1]), Path(sys.argv[2]), opts, progress=lambda s: print(s, flush=True))
    print("skipped", r.skipped)
"""


def test_killed_conversion_resumes_and_never_publishes_half(tmp_path: Path) -> None:
    generate(tmp_path / "raw", episodes=4, steps=30)
    script = tmp_path / "conv.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "raw"), str(tmp_path / "out")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    staged = tmp_path / "out" / ".staging" / "pick" / "demo_clean" / "data"
    deadline = time.monotonic() + 120
    while not list(staged.glob("episode*.hdf5")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(staged.glob("episode*.hdf5")), "nothing was staged before the kill"
    assert not (tmp_path / "out" / "pick" / "demo_clean").exists()  # nothing half-published
    again = subprocess.run([sys.executable, str(script), str(tmp_path / "raw"), str(tmp_path / "out")], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    skipped = int(again.stdout.strip().splitlines()[-1].split()[-1])
    assert skipped >= 1
    files = sorted((tmp_path / "out" / "pick" / "demo_clean" / "data").glob("*.hdf5"))
    assert [f.name for f in files] == [f"episode{i}.hdf5" for i in range(4)]
    assert not (tmp_path / "out" / ".staging").exists()
