"""`runner deploy JOB`, the policy side: a policy's adapter (observations exactly as training saw them, from what
the checkpoint recorded about its data: camera, point-cloud pipeline and intrinsics, crop, points, gripper
binarisation), the refusal of a deploy job whose own preprocessing differs from the checkpoint's (both values
named), and the wiring of the job's options to the robot, the camera, the recorder and the control loop
(robot/loop.py, which knows no policy: it drives any robot.protocol.PolicyAdapter)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from policies.context import StepContext
from policies.convert_options import ConvertCommon
from robot.cameras import RealSenseCamera, ReplayCamera
from robot.formats import binarize
from robot.loop import LoopConfig, run_loop
from robot.options import Deploy, GripperConvention
from robot.protocol import Camera, PolicyAdapter, Robot
from robot.recorder import Recorder
from robot.safety import Limits
from robot.sim import SimFranka
from robot.zmq_link import LinkTimeout, RobotServerError, ZmqCameraClient, ZmqRobotClient, ZmqRobotServer
from runner.spec.models import default_of

#: Conversion fields that change what the policy sees; compared between the deploy job and the checkpoint.
COMPARED = ("camera", "binarize_gripper", "gripper_threshold")
CLOUD_COMPARED = ("fx", "fy", "cx", "cy", "depth_scale", "num_points", "crop_min", "crop_max", "extrinsics")


class PreprocessingMismatch(ValueError):
    """The deploy job would build observations differently from the data the policy was trained on."""


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return round(float(v), 9) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def check_preprocessing(trained: Mapping[str, Any], deploy: Mapping[str, Any], where: str) -> None:
    """Every field the deploy job sets must equal the training record's value."""
    diffs = []
    for key in COMPARED:
        if key in deploy and key in trained and _norm(deploy[key]) != _norm(trained[key]):
            diffs.append(f"{key}: deploy job {deploy[key]!r}, checkpoint {trained[key]!r}")
    t_cloud, d_cloud = trained.get("pointcloud") or {}, deploy.get("pointcloud") or {}
    for key in CLOUD_COMPARED:
        if key in d_cloud and key in t_cloud and _norm(d_cloud[key]) != _norm(t_cloud[key]):
            diffs.append(f"pointcloud.{key}: deploy job {d_cloud[key]!r}, checkpoint {t_cloud[key]!r}")
    if diffs:
        msg = (f"{where}: the deploy preprocessing differs from the checkpoint's training data:\n  " + "\n  ".join(diffs)
               + "\nuse the job the checkpoint was trained with, or retrain on data converted with these settings")
        raise PreprocessingMismatch(msg)


def state_as_trained(joints: np.ndarray, conversion: Mapping[str, Any]) -> np.ndarray:
    """The robot's 8 values as the converter stored them: the gripper binarised when the data was."""
    out = np.asarray(joints, dtype=np.float32).copy()
    if conversion.get("binarize_gripper"):
        out[-1] = binarize(out[-1], float(conversion.get("gripper_threshold", 0.5)))
    return out


#: Stop reasons that end a deploy normally (exit 0); anything else is a failure (exit 1).
CLEAN = ("stop requested", "duration")


def deploy_preprocessing(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the job's convert section says the observations look like, in the conversion record's terms."""
    conv = (spec.get("steps") or {}).get("convert") or {}
    out: dict[str, Any] = {k: conv[k] for k in COMPARED if k in conv}
    cloud: dict[str, Any] = {}
    if conv.get("intrinsics"):
        cloud.update({k: conv["intrinsics"][k] for k in ("fx", "fy", "cx", "cy", "depth_scale")})
    if conv.get("num_points"):
        cloud["num_points"] = conv["num_points"]
    if conv.get("crop"):
        cloud["crop_min"], cloud["crop_max"] = conv["crop"]["min"], conv["crop"]["max"]
    if cloud:
        out["pointcloud"] = cloud
    return out


def _camera(o: Deploy, ctx: StepContext, camera_name: str) -> Camera:
    if o.camera == "realsense":
        return RealSenseCamera(o.camera_serial)
    if o.camera == "zmq":
        return ZmqCameraClient(o.camera_host, o.camera_port, o.timeout_ms)
    episode = Path(o.replay_episode) if o.replay_episode else next(
        iter(sorted(ctx.path("converted").glob("*/*/data/episode*.hdf5"))), None)
    if episode is None:
        msg = "steps.deploy.camera is replay but no episode to replay: set steps.deploy.replay_episode"
        raise FileNotFoundError(msg)
    return ReplayCamera(episode, camera_name)


def _gripper_convention(conversion: Mapping[str, Any]) -> dict[str, Any]:
    """The loop's gripper settings from what the checkpoint recorded of its data's conversion."""
    g = GripperConvention.model_validate({k: conversion[k] for k in GripperConvention.model_fields if k in conversion})
    return {"command_gripper": g.command_gripper, "binarize_action_gripper": g.binarize_gripper,
            "gripper_threshold": g.gripper_threshold}


def warm_up(robot: Robot, camera: Camera, adapter: PolicyAdapter, chunks: int = 2) -> float:
    """Action chunks from the robot's pose and camera frames, thrown away, before the loop starts: a policy's
    first call captures its CUDA graphs (and compiles, when asked), which would otherwise stall the first ticks
    (the arm holding) and count in the loop's inference latency. Two chunks: RDT's second call, the first with a
    previous frame, captures the graph every later call replays. Returns their seconds."""
    t0 = time.monotonic()
    joints = np.asarray(robot.get_joint_state(), np.float64)
    for _ in range(chunks):
        rgb, depth = camera.read()
        adapter.act([adapter.observation(joints, rgb, depth)] * adapter.window)
    return time.monotonic() - t0


def deploy(ctx: StepContext, make_adapter: Callable[[StepContext], tuple[PolicyAdapter, dict[str, Any]]]) -> int:
    o = ctx.typed(Deploy)
    try:
        adapter, conversion = make_adapter(ctx)
    except (PreprocessingMismatch, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    server = None
    if o.robot == "sim":
        server = ZmqRobotServer(SimFranka(), o.robot_port, o.robot_host).start()
        print(f"deploy: simulated Franka serving GELLO's protocol on {o.robot_host}:{o.robot_port}")
    robot = ZmqRobotClient(o.robot_host, o.robot_port, o.timeout_ms)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    recorder = None
    try:
        dofs = robot.num_dofs()
        if dofs != 8:
            print(f"error: the robot at {o.robot_host}:{o.robot_port} has {dofs} DoF; the policy drives 7 joints + "
                  "gripper (8)", file=sys.stderr)
            return 2
        camera_name = str(conversion.get("camera", default_of(ConvertCommon, "camera")))
        camera = _camera(o, ctx, camera_name)
        print("deploy: warm-up: two action chunks, nothing sent"
              + (" (compiling: about a minute)" if o.compile else ""), flush=True)
        try:
            took = warm_up(robot, camera, adapter)
        except (LinkTimeout, RobotServerError):
            raise
        except Exception as e:  # noqa: BLE001 - whatever the policy raises, nothing has moved: say so and stop
            print(f"error: the policy failed on its first observation, before anything moved: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 1
        print(f"deploy: warm-up: the first two action chunks took {took:.1f} s, before the control loop's clock starts "
              "(a GPU policy captures its CUDA graphs there, and compiles when asked)", flush=True)
        if o.record:
            recorder = Recorder(ctx.run_dir / "deploy" / "episode0.hdf5", camera_name,
                                {**conversion, "deploy": o.model_dump(mode="json", include={"control_hz", "dry_run", "robot"})})
        cfg = LoopConfig(hz=o.control_hz, duration_s=o.duration_s, dry_run=o.dry_run, stale_s=o.stale_s,
                         limits=Limits(max_delta=o.max_joint_delta, start_max_distance=o.start_max_distance,
                                       ramp=o.ramp),
                         ensemble=o.ensemble, **_gripper_convention(conversion))
        mode = "dry run: computing actions, sending nothing" if o.dry_run else "sending commands"
        print(f"deploy: {adapter.kind} at {o.control_hz:g} Hz, {mode}; Ctrl-C stops and holds the last pose", flush=True)
        report = run_loop(robot, camera, adapter, cfg, stop, recorder)
    except (LinkTimeout, RobotServerError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        robot.close()
        if server is not None:
            server.stop()
    for line in report.summary(o.control_hz):
        print(line, flush=True)
    if recorder is not None:
        recorder.close(complete=True)
        print(f"deploy: recorded {recorder.n} steps to {recorder.path}")
    return 0 if report.stopped_by.startswith(CLEAN) else 1
