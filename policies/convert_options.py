"""Convert-step options every policy shares: where the demos come from, how time and the gripper are treated, and
how depth becomes point clouds. Importable without numpy: the job models use it on the host."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from robot.options import GripperConvention
from runner.spec.models import Model, StepSpec


class Intrinsics(Model):
    fx: float = Field(gt=0)
    fy: float = Field(gt=0)
    cx: float
    cy: float
    depth_scale: float = Field(default=0.001, gt=0, description="metres per depth unit (z16: 0.001)")


class CropBox(Model):
    min: tuple[float, float, float]
    max: tuple[float, float, float]


class CloudOptions(Model):
    """How depth frames become point clouds (policies/data/pointcloud.py takes its defaults from here)."""

    intrinsics: Intrinsics | None = None
    extrinsics: list[list[float]] | None = Field(default=None, description="4x4 camera-to-base transform")
    crop: CropBox | None = None
    num_points: int = Field(default=1024, gt=0)
    presample: Literal["voxel", "none"] = Field(default="voxel", description="'none': exact FPS on every point")
    voxel_size: float = Field(default=0.005, gt=0, description="metres")
    seed: int = 0


class ConvertCommon(StepSpec, GripperConvention):
    """Every policy's convert options; the conversion library's dataclasses (TimeOptions, GelloOptions,
    ConvertOptions) take their defaults from here."""

    config: str = Field(default="demo_clean", description="RoboTwin task_config name of the output")
    camera: str = Field(default="front", description="GELLO camera name: <camera>_rgb / <camera>_depth keys")
    velocities: Literal["finite_difference", "recorded"] = Field(
        default="finite_difference", description="GELLO's Panda driver records a copy of the positions")
    stride: int = Field(default=1, ge=1)
    keyframes: bool = False
    keyframe_joint_delta: float = Field(default=0.02, gt=0, description="radians since the last kept frame")
    action_source: Literal["next_state", "control"] = "next_state"
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    workers: int = Field(default=2, ge=1)
    instructions: list[str] = Field(default_factory=list)
    sample_if_missing: bool = Field(default=False, description="generate sample demos when data.raw is missing")
