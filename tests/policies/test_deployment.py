"""The deploy loop against the simulated Franka over real ZMQ on loopback, with a DP3 checkpoint trained on the
sample data (and a tiny RDT policy): rate, recording that converts, safety limits, stops, dry run, refusals."""

import pickle
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
import zmq

from policies.data.convert import ConvertOptions, convert
from policies.data.pointcloud import CloudSpec
from policies.data.sample import CX, CY, FX, FY, generate
from policies.data.transform import TimeOptions
from policies.deployment import PreprocessingMismatch, check_preprocessing, state_as_trained
from policies.dp3.adapter import Dp3Adapter
from policies.dp3.config import Dp3Train
from policies.dp3.data import load_buffer
from policies.dp3.infer import load
from policies.dp3.model import Dp3Config
from policies.dp3.train import train
from policies.dp3.zarr_buffer import write_buffer
from robot.cameras import ReplayCamera
from robot.loop import LoopConfig, run_loop
from robot.recorder import Recorder
from robot.safety import Limits
from robot.sim import SimFranka
from robot.zmq_link import RobotServerError, ZmqRobotClient, ZmqRobotServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("deploy")
    generate(root / "raw", episodes=2, steps=24)
    opts = ConvertOptions(task="pick", cloud=CloudSpec(FX, FY, CX, CY, num_points=64), workers=1,
                          time=TimeOptions(binarize_gripper=True))
    rep = convert(root / "raw", root / "out", opts)
    buf = write_buffer(rep.episodes, root / "out" / "pick-demo_clean-2.zarr").path
    conversion = dict(zarr.open(str(buf), "r").attrs["conversion"])
    (root / "run").mkdir()
    cfg = Dp3Config(state_dim=8, action_dim=8, num_points=64, down_dims=(16, 32, 64))
    s = Dp3Train(epochs=100, batch_size=16, lr=1e-3, lr_warmup_steps=2, max_steps=30, checkpoint_every=1000,
                      val_every=1000, val_ratio=0.0, log_every=10)
    res = train(cfg, load_buffer(buf), s, ckpt_dir=root / "ckpt", run_dir=root / "run", device=torch.device("cpu"),
                resume=False, extra={"conversion": conversion}, say=lambda m: None)
    return {"ckpt": res.last_checkpoint, "episode": rep.episodes[0], "conversion": conversion, "root": root}


class Sim:
    """A simulated Franka served over ZMQ on a free loopback port, and a client for it."""

    def __init__(self, q0: np.ndarray | None = None) -> None:
        self.arm = SimFranka(q0)
        port = free_port()
        self.server = ZmqRobotServer(self.arm, port).start()
        self.client = ZmqRobotClient("127.0.0.1", port, timeout_ms=500)

    def close(self) -> None:
        self.client.close()
        self.server.stop()


def loop_cfg(**kw: Any) -> LoopConfig:
    return LoopConfig(**{"hz": 20.0, "duration_s": 1.5, "limits": Limits(start_max_distance=3.0), **kw})


def dp3(trained: dict[str, Any]) -> Dp3Adapter:
    policy = load(trained["ckpt"], "cpu")
    return Dp3Adapter(policy, trained["conversion"])


def test_loop_runs_at_rate_records_and_the_recording_converts(trained: dict[str, Any], tmp_path: Path) -> None:
    sim = Sim()
    rec = Recorder(tmp_path / "episode0.hdf5", "front", trained["conversion"])
    try:
        report = run_loop(sim.client, ReplayCamera(trained["episode"], "front"), dp3(trained),
                          loop_cfg(hz=10.0, duration_s=2.0), threading.Event(), rec)
    finally:
        sim.close()
    rec.close(complete=True)
    assert report.stopped_by.startswith("duration")
    assert 17 <= report.steps <= 21 and report.sent >= report.steps - 6  # 10 Hz for 2 s; the first chunk is awaited
    assert abs(float(np.median(report.period_ms)) - 100.0) < 10.0
    assert len(sim.arm.commands) == report.sent
    buf = write_buffer([rec.path], tmp_path / "again.zarr")  # the normal conversion takes the rollout
    assert buf.samples == report.steps - 1 and buf.point_shape == (64, 6)


def test_safety_clamps_joint_limits_and_per_step_deltas(trained: dict[str, Any]) -> None:
    class Wild:
        kind, window, chunk = "test", 1, 4

        def observation(self, joints: np.ndarray, rgb: np.ndarray, depth: np.ndarray) -> dict[str, Any]:
            return {"q": joints}

        def act(self, window: list[dict[str, Any]]) -> np.ndarray:
            far = window[-1]["q"].copy()
            far[:7] += np.array([5.0, -5.0, 0.3, 4.0, 0.2, -4.0, 0.1])  # way past the limits on some joints
            return np.repeat(far[None], 4, axis=0)

    sim = Sim()
    try:
        report = run_loop(sim.client, ReplayCamera(trained["episode"], "front"), Wild(),
                          loop_cfg(limits=Limits(max_delta=0.02, start_max_distance=10.0)), threading.Event())
    finally:
        sim.close()
    sent = np.array(sim.arm.commands)
    sent[:, -1] = 1.0 - sent[:, -1]  # back to the observation convention
    limits = Limits()
    assert report.limited == report.sent > 10
    assert (sent >= limits.lower - 1e-9).all() and (sent <= limits.upper + 1e-9).all()
    assert np.abs(np.diff(sent[:, :7], axis=0)).max() <= 0.02 + 1e-9


@pytest.mark.parametrize("binarize", [False, True])
def test_action_gripper_is_binarised_when_the_deploy_asks(trained: dict[str, Any], binarize: bool) -> None:
    class Hover:  # holds the arm, the gripper hovering at 0.7 (open side of 0.5)
        kind, window, chunk = "test", 1, 4

        def observation(self, joints: np.ndarray, rgb: np.ndarray, depth: np.ndarray) -> dict[str, Any]:
            return {"q": joints}

        def act(self, window: list[dict[str, Any]]) -> np.ndarray:
            held = window[-1]["q"].copy()
            held[-1] = 0.7
            return np.repeat(held[None], 4, axis=0)

    sim = Sim()
    try:
        report = run_loop(sim.client, ReplayCamera(trained["episode"], "front"), Hover(),
                          loop_cfg(duration_s=0.6, binarize_action_gripper=binarize), threading.Event())
    finally:
        sim.close()
    wire = np.array(sim.arm.commands)[:, -1]  # the robot's convention: 1.0 = closed
    assert report.sent > 3
    np.testing.assert_allclose(wire, 0.0 if binarize else 0.3, atol=1e-6)


def test_state_as_trained_binarises_the_gripper_as_the_conversion_did() -> None:
    joints = np.array([0.1, 0.2, 0.3, -1.0, 0.0, 1.5, 0.4, 0.7])
    on = state_as_trained(joints, {"binarize_gripper": True, "gripper_threshold": 0.8})
    assert on[-1] == 0.0 and on.dtype == np.float32
    np.testing.assert_allclose(on[:-1], joints[:-1], rtol=1e-6)
    assert state_as_trained(joints, {"binarize_gripper": True})[-1] == 1.0  # the converter's default 0.5
    assert state_as_trained(joints, {})[-1] == np.float32(0.7)


def test_far_first_pose_is_refused_and_nothing_is_sent(trained: dict[str, Any]) -> None:
    sim = Sim(q0=np.array([1.0, 0.5, 0.5, -1.0, 0.5, 2.5, -0.5, 1.0]))
    try:
        report = run_loop(sim.client, ReplayCamera(trained["episode"], "front"), dp3(trained),
                          loop_cfg(limits=Limits(start_max_distance=0.2)), threading.Event())
    finally:
        sim.close()
    assert "first pose is" in report.stopped_by and "ramp: true" in report.stopped_by
    assert sim.arm.commands == []


@pytest.mark.parametrize("case", ["ctrl_c", "exception", "stale_camera"])
def test_stops_hold_and_say_why(trained: dict[str, Any], case: str) -> None:
    stop = threading.Event()
    camera: Any = ReplayCamera(trained["episode"], "front")
    adapter: Any = dp3(trained)
    if case == "ctrl_c":
        threading.Timer(0.6, stop.set).start()
    elif case == "exception":
        calls = {"n": 0}
        real = adapter.act

        def failing(window: list[dict[str, Any]]) -> np.ndarray:
            calls["n"] += 1
            if calls["n"] > 2:
                raise RuntimeError("CUDA error: device-side assert")
            return real(window)

        adapter.act = failing
    else:
        replay = camera

        class Freezing:
            def __init__(self) -> None:
                self.n = 0

            def read(self) -> tuple[np.ndarray, np.ndarray]:
                self.n += 1
                if self.n > 8:
                    time.sleep(5)  # the camera hangs
                return replay.read()

        camera = Freezing()
    sim = Sim()
    try:
        report = run_loop(sim.client, camera, adapter, loop_cfg(duration_s=4.0, stale_s=0.3), stop)
        sent_at_stop = len(sim.arm.commands)
        time.sleep(0.3)
        assert len(sim.arm.commands) == sent_at_stop  # holds: nothing is sent after the stop
    finally:
        stop.set()
        sim.close()
    expected = {"ctrl_c": "stop requested", "exception": "inference failed: RuntimeError: CUDA error",
                "stale_camera": "camera: no new frame"}[case]
    assert report.stopped_by.startswith(expected), report.stopped_by
    assert report.steps < 60  # it stopped well before the 4 s duration


def test_dry_run_sends_nothing(trained: dict[str, Any]) -> None:
    sim = Sim()
    try:
        report = run_loop(sim.client, ReplayCamera(trained["episode"], "front"), dp3(trained),
                          loop_cfg(dry_run=True, duration_s=0.8), threading.Event())
    finally:
        sim.close()
    assert report.steps > 10 and report.sent == 0 and sim.arm.commands == [] and sim.server.commands == 0


def test_deploy_preprocessing_differing_from_training_is_refused(trained: dict[str, Any]) -> None:
    conv = trained["conversion"]
    same = {"camera": conv["camera"], "pointcloud": {"fx": conv["pointcloud"]["fx"], "num_points": 64}}
    check_preprocessing(conv, same, "job")
    other = {"binarize_gripper": False, "pointcloud": {"fx": 600.0, "num_points": 1024}}
    with pytest.raises(PreprocessingMismatch) as e:
        check_preprocessing(conv, other, "sample_dp3 deploy")
    text = str(e.value)
    assert "binarize_gripper: deploy job False, checkpoint True" in text
    assert "pointcloud.fx: deploy job 600.0, checkpoint 120.0" in text and "pointcloud.num_points" in text


def test_reply_carrying_other_objects_is_refused() -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    port = free_port()
    ctx = zmq.Context.instance()
    rep = ctx.socket(zmq.REP)
    rep.bind(f"tcp://127.0.0.1:{port}")

    def serve() -> None:
        rep.recv()
        rep.send(pickle.dumps({"joint_positions": np.zeros(8), "x": Evil()}))

    t = threading.Thread(target=serve)
    t.start()
    client = ZmqRobotClient("127.0.0.1", port, timeout_ms=2000)
    with pytest.raises(RobotServerError, match=r"refused to load builtins\.print"):
        client.get_observations()
    t.join()
    client.close()
    rep.close()


def test_rdt_policy_in_the_same_loop(trained: dict[str, Any], tmp_path: Path) -> None:
    from policies.rdt.adapter import RdtAdapter
    from policies.rdt.infer import RdtPolicy
    from policies.rdt.model import RdtConfig, RdtRunner
    from policies.rdt.state_space import FRANKA
    from policies.rdt.vision import save_tiny_siglip

    cfg = replace(RdtConfig.tiny(), horizon=64, img_cond_len=6 * 4)
    siglip = save_tiny_siglip(tmp_path / "siglip", hidden=cfg.img_token_dim)
    meta = {"state_map": {"name": "franka", "indices": list(FRANKA.indices)}, "img_history_size": 2, "ctrl_freq": 20}
    policy = RdtPolicy(RdtRunner(cfg).eval(), meta, torch.device("cpu"), torch.float32, siglip)
    adapter = RdtAdapter(policy, trained["conversion"], {"cam_high": "front"}, torch.randn(5, cfg.lang_token_dim))
    assert adapter.chunk == 64
    sim = Sim()
    try:
        report = run_loop(sim.client, ReplayCamera(trained["episode"], "front"), adapter,
                          loop_cfg(ensemble=0.01, duration_s=1.0), threading.Event())
    finally:
        sim.close()
    assert report.stopped_by.startswith("duration") and report.sent > 10


@pytest.mark.slow
def test_runner_deploy_rehearses_on_the_sim_after_a_warm_up_and_exits_cleanly(tmp_path: Path) -> None:
    """`runner deploy sample_dp3` as the README shows it (local executor): the policy's first chunk is computed
    before the loop starts, the loop's threads end before the process does (it aborted with exit 134 when they
    did not), the rollout is recorded."""
    import yaml

    from tests.runner.test_run_lifecycle import REPO, cli

    spec = yaml.safe_load((REPO / "jobs" / "sample_dp3.yaml").read_text())
    spec["steps"]["train"].update(epochs=2, checkpoint_every=2)
    spec["steps"]["deploy"].update(duration_s=2, ramp=True, robot_port=free_port())  # barely trained: far first pose
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "sample_dp3.yaml").write_text(yaml.safe_dump(spec))
    for verb in ("convert", "train"):
        r = cli(verb, "sample_dp3", "--executor", "local", cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
    r = cli("deploy", "sample_dp3", "--executor", "local", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "terminate called" not in out
    warm = out.index("deploy: warm-up: the first two action chunks took")
    assert warm < out.index("deploy: dp3 at 10 Hz") < out.index("deploy: stopped: duration 2 s reached")
    assert "thread(s) still ran" not in out
    assert list((tmp_path / "runs" / "sample_dp3").glob("*/deploy/episode0.hdf5"))
