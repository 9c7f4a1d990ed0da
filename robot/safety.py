"""What may be sent to the arm: joint limits, a per-step joint-delta limit, and the start-pose check (refuse a
first command far from where the arm is, or ramp to it slowly when the job asks). Pure functions of arrays.

`decide` is the whole decision of one control tick: from the policy's action, the arm's reading and the last
command, either the command to send or the reason to stop and hold. A non-finite reading or action, a reading
outside the arm's physical range (beyond `reading_margin`), or a malformed one stops the loop: nothing computed
from it is ever sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robot.options import Deploy
from robot.protocol import PANDA_LOWER, PANDA_UPPER
from runner.spec.models import default_of


class StartPoseError(RuntimeError):
    """The policy's first pose is too far from the arm's pose to go there in one step."""


@dataclass(frozen=True)
class Limits:
    lower: np.ndarray = field(default_factory=PANDA_LOWER.copy)
    upper: np.ndarray = field(default_factory=PANDA_UPPER.copy)
    max_delta: float = default_of(Deploy, "max_joint_delta")  # rad a control step, joints only (not the gripper)
    start_max_distance: float = default_of(Deploy, "start_max_distance")  # rad, largest first-command difference
    ramp: bool = default_of(Deploy, "ramp")  # go to a far first pose at ramp_delta a step instead of refusing
    ramp_delta: float = 0.01
    reading_margin: float = 0.1  # rad (gripper: fraction) a reading may pass the datasheet limits by: sensor noise


@dataclass
class Clamped:
    command: np.ndarray
    limited: bool  # True when a limit changed the policy's pose
    which: tuple[str, ...] = ()  # the limits that did: "joint range", "max_joint_delta", "ramp"


def clamp(target: np.ndarray, last: np.ndarray, limits: Limits, max_delta: float | None = None) -> Clamped:
    """Limit `target` to the joint limits and to `max_delta` per joint from the last sent pose."""
    step = limits.max_delta if max_delta is None else max_delta
    ranged = np.clip(target, limits.lower, limits.upper)
    out = ranged.copy()
    joints = slice(0, len(out) - 1)
    out[joints] = np.clip(out[joints], last[joints] - step, last[joints] + step)
    which = []
    if np.any(np.abs(ranged - target) > 1e-9):
        which.append("joint range")
    if np.any(np.abs(out - ranged) > 1e-9):
        which.append("max_joint_delta" if max_delta is None else "ramp")
    return Clamped(out, bool(which), tuple(which))


def check_start(first: np.ndarray, current: np.ndarray, limits: Limits) -> None:
    """Refuse (unless ramping) a first pose farther than start_max_distance from the arm's joints."""
    gap = np.abs(first[:-1] - current[:-1])
    worst = int(np.argmax(gap))
    if gap[worst] > limits.start_max_distance and not limits.ramp:
        msg = (f"the policy's first pose is {gap[worst]:.3f} rad from the arm on joint {worst + 1} (limit "
               f"{limits.start_max_distance} rad, steps.deploy.start_max_distance): move the arm near the training "
               "start pose, or set steps.deploy.ramp: true to approach it slowly")
        raise StartPoseError(msg)


@dataclass(frozen=True)
class Decision:
    command: np.ndarray | None  # what to send (the policy's pose after the limits), or None
    stop: str | None = None  # why the loop must stop and hold; None to go on
    limited: bool = False
    started: bool = False  # the first command passed the start-pose check
    which: tuple[str, ...] = ()  # the limits that changed the command


def check_reading(joints: np.ndarray, limits: Limits) -> str | None:
    """Why a joint reading cannot be trusted (malformed, non-finite, outside the arm's range), or None."""
    q = np.asarray(joints)
    if q.shape != limits.lower.shape or not np.issubdtype(q.dtype, np.number):
        return f"robot: malformed joint reading (shape {q.shape}, dtype {q.dtype}; expected {limits.lower.shape[0]} numbers)"
    bad = np.flatnonzero(~np.isfinite(q))
    if bad.size:
        return f"robot: non-finite joint reading {_joints(bad)} ({_values(q, bad)})"
    out = np.flatnonzero((q < limits.lower - limits.reading_margin) | (q > limits.upper + limits.reading_margin))
    if out.size:
        return (f"robot: joint reading outside the arm's range on {_joints(out)} ({_values(q, out)}; range "
                f"{', '.join(f'[{limits.lower[i]:g}, {limits.upper[i]:g}]' for i in out)})")
    return None


def check_action(action: np.ndarray, dims: int) -> str | None:
    """Why the policy's action cannot be sent (malformed or non-finite), or None."""
    a = np.asarray(action)
    if a.shape != (dims,) or not np.issubdtype(a.dtype, np.number):
        return f"policy: malformed action (shape {a.shape}; expected ({dims},))"
    bad = np.flatnonzero(~np.isfinite(a))
    return f"policy: non-finite action {_joints(bad)} ({_values(a, bad)})" if bad.size else None


def check_observation(obs: dict[str, object]) -> str | None:
    """Why the observation built for the policy holds non-finite numbers, or None."""
    for key, value in obs.items():
        arr = np.asarray(value)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            return f"observation: {key} holds {int((~np.isfinite(arr)).sum())} non-finite values"
    return None


def decide(action: np.ndarray, joints: np.ndarray, last: np.ndarray, limits: Limits, started: bool) -> Decision:
    """One tick's command from the policy's `action` (already in the arm's convention), or why to stop."""
    why = check_reading(joints, limits) or check_action(action, len(limits.lower))
    if why:
        return Decision(None, why)
    target = np.asarray(action, dtype=np.float64).copy()
    if not started:
        try:
            check_start(target, joints, limits)
        except StartPoseError as e:
            return Decision(None, str(e))
    far = limits.ramp and float(np.max(np.abs(target[:-1] - joints[:-1]))) > limits.start_max_distance
    clamped = clamp(target, last, limits, limits.ramp_delta if far else None)
    if not np.isfinite(clamped.command).all():  # cannot happen from finite inputs; the arm never gets a NaN
        return Decision(None, "safety: non-finite command after the limits")
    return Decision(clamped.command, None, clamped.limited, True, clamped.which)


def _joints(idx: np.ndarray) -> str:
    names = [f"joint {i + 1}" if i < 7 else "gripper" for i in idx.tolist()]
    return ", ".join(names)


def _values(a: np.ndarray, idx: np.ndarray) -> str:
    return ", ".join(f"{float(a[i]):g}" for i in idx.tolist())
