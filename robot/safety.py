"""What may be sent to the arm: joint limits, a per-step joint-delta limit, and the start-pose check (refuse a
first command far from where the arm is, or ramp to it slowly when the job asks). Pure functions of arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robot.protocol import PANDA_LOWER, PANDA_UPPER


class StartPoseError(RuntimeError):
    """The policy's first pose is too far from the arm's pose to go there in one step."""


@dataclass(frozen=True)
class Limits:
    lower: np.ndarray = field(default_factory=PANDA_LOWER.copy)
    upper: np.ndarray = field(default_factory=PANDA_UPPER.copy)
    max_delta: float = 0.05  # rad a control step, joints only (the gripper is last and exempt)
    start_max_distance: float = 0.2  # rad, largest joint difference accepted for the first command
    ramp: bool = False  # go to a far first pose at ramp_delta a step instead of refusing
    ramp_delta: float = 0.01


@dataclass
class Clamped:
    command: np.ndarray
    limited: bool  # True when a limit changed the policy's pose


def clamp(target: np.ndarray, last: np.ndarray, limits: Limits, max_delta: float | None = None) -> Clamped:
    """Limit `target` to the joint limits and to `max_delta` per joint from the last sent pose."""
    step = limits.max_delta if max_delta is None else max_delta
    out = np.clip(target, limits.lower, limits.upper)
    joints = slice(0, len(out) - 1)
    out[joints] = np.clip(out[joints], last[joints] - step, last[joints] + step)
    return Clamped(out, bool(np.any(np.abs(out - target) > 1e-9)))


def check_start(first: np.ndarray, current: np.ndarray, limits: Limits) -> None:
    """Refuse (unless ramping) a first pose farther than start_max_distance from the arm's joints."""
    gap = np.abs(first[:-1] - current[:-1])
    worst = int(np.argmax(gap))
    if gap[worst] > limits.start_max_distance and not limits.ramp:
        msg = (f"the policy's first pose is {gap[worst]:.3f} rad from the arm on joint {worst + 1} (limit "
               f"{limits.start_max_distance} rad, steps.deploy.start_max_distance): move the arm near the training "
               "start pose, or set steps.deploy.ramp: true to approach it slowly")
        raise StartPoseError(msg)
