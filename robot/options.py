"""The robot side's options, declared once: the deploy step's (every policy's), and the gripper conventions the
conversion and the control loop share. robot/loop.py and robot/safety.py take their defaults from here
(runner.spec.models.default_of); this module stays importable without numpy, as the job models need on the host."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runner.spec.models import Model, StepSpec


class GripperConvention(Model):
    """How the recorded gripper reads (GELLO Panda: 1.0 = open in the observation, 1.0 = closed in the command)."""

    command_gripper: Literal["closed_is_one", "open_is_one"] = Field(
        default="closed_is_one", description="Panda command 1.0 = closed; stored in the observation's sense")
    binarize_gripper: bool = False
    gripper_threshold: float = Field(default=0.5, description="observation convention: >= threshold is open (1.0)")


class Deploy(StepSpec):
    checkpoint: str = Field(default="latest", description="latest, or a checkpoint file/folder name")
    robot: Literal["gello", "sim"] = Field(
        default="gello", description="gello: a GELLO robot server at robot_host:robot_port; sim: a simulated Franka "
        "served on that port by this step (dry runs, tests)")
    robot_host: str = "127.0.0.1"
    robot_port: int = Field(default=6001, gt=0, lt=65536)
    camera: Literal["zmq", "realsense", "replay"] = "zmq"
    camera_host: str = "127.0.0.1"
    camera_port: int = Field(default=5000, gt=0, lt=65536)
    camera_serial: str | None = None
    replay_episode: str | None = Field(default=None, description="episode file the replay camera plays")
    control_hz: float = Field(default=10.0, gt=0)
    duration_s: float | None = Field(default=None, gt=0, description="stop after this long; default: until Ctrl-C")
    max_joint_delta: float = Field(default=0.05, gt=0, description="radians per control step")
    start_max_distance: float = Field(default=0.2, gt=0, description="radians; farther first poses are refused")
    ramp: bool = Field(default=False, description="approach a far first pose slowly instead of refusing")
    stale_s: float = Field(default=0.5, gt=0, description="stop when the camera or robot is silent this long")
    timeout_ms: int = Field(default=1000, gt=0)
    dry_run: bool = False
    ensemble: float | None = Field(default=None, ge=0, description="RDT temporal ensembling weight k")
    instruction: int = Field(default=0, ge=0, description="RDT: which of the job's instructions to follow")
    record: bool = True
    compile: bool | None = Field(
        default=None, description="torch.compile the policy's sampling before its CUDA graphs are captured (GPU); "
        "default: DP3 yes (at load), RDT no (with it: act 23.1 ms p50 with 3 cameras on an H200, against 31.8 "
        "uncompiled before the split image attention: docs/rdt.md; the warm-up before the loop takes ~1 min)")
