"""Deploy step options shared by every policy (the control loop itself is robot/)."""

from __future__ import annotations

from pydantic import Field

from runner.spec.models import StepSpec


class Deploy(StepSpec):
    robot_host: str = "127.0.0.1"
    robot_port: int = Field(default=6001, gt=0, lt=65536)
    control_hz: float = Field(default=10.0, gt=0)
    max_joint_delta: float = Field(default=0.05, gt=0, description="radians per control step")
    dry_run: bool = False
