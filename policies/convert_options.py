"""Convert-step options every policy shares: where the demos come from and how time and the gripper are treated."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runner.spec.models import StepSpec


class ConvertCommon(StepSpec):
    config: str = Field(default="demo_clean", description="RoboTwin task_config name of the output")
    camera: str = Field(default="front", description="GELLO camera name: <camera>_rgb / <camera>_depth keys")
    velocities: Literal["finite_difference", "recorded"] = Field(
        default="finite_difference", description="GELLO's Panda driver records a copy of the positions")
    command_gripper: Literal["closed_is_one", "open_is_one"] = Field(
        default="closed_is_one", description="Panda command 1.0 = closed; stored in the observation's sense")
    binarize_gripper: bool = False
    gripper_threshold: float = 0.5
    stride: int = Field(default=1, ge=1)
    keyframes: bool = False
    keyframe_joint_delta: float = Field(default=0.02, gt=0, description="radians since the last kept frame")
    action_source: Literal["next_state", "control"] = "next_state"
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    workers: int = Field(default=2, ge=1)
    instructions: list[str] = Field(default_factory=list)
    sample_if_missing: bool = Field(default=False, description="generate sample demos when data.raw is missing")
