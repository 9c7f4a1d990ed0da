"""The generic policy: each step is a command the user names, run in the base image."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runner.spec.models import JobCommon, StepSpec


class CommandStep(StepSpec):
    command: list[str] | str = Field(description="argv, or a string run with sh -c")


class CommandJob(JobCommon):
    policy: Literal["command"]
    steps: dict[str, CommandStep] = Field(default_factory=dict)
