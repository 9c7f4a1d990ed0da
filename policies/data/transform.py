"""PURE per-episode transforms applied before writing: gripper binarisation and temporal down-sampling.
What was applied is recorded in the outputs' attributes so training and deploy do the same."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from policies.convert_options import ConvertCommon
from robot.formats import binarize
from runner.spec.models import default_of


@dataclass(frozen=True)
class TimeOptions:
    binarize_gripper: bool = default_of(ConvertCommon, "binarize_gripper")
    gripper_threshold: float = default_of(ConvertCommon, "gripper_threshold")  # observation: >= threshold is open
    stride: int = default_of(ConvertCommon, "stride")
    keyframes: bool = default_of(ConvertCommon, "keyframes")
    keyframe_joint_delta: float = default_of(ConvertCommon, "keyframe_joint_delta")  # radians since the last kept frame
    action_source: Literal["next_state", "control"] = default_of(ConvertCommon, "action_source")

    def attrs(self) -> dict[str, Any]:
        return asdict(self)


def select_frames(qpos: np.ndarray, gripper: np.ndarray, opts: TimeOptions) -> np.ndarray:
    """Indices of the frames to keep: every `stride`-th, or keyframes (gripper changes, moves past a threshold).

    First and last frames are always kept."""
    t = len(qpos)
    if t == 0:
        return np.zeros(0, dtype=np.int64)
    if not opts.keyframes:
        idx = np.arange(0, t, opts.stride)
        return idx if idx[-1] == t - 1 else np.append(idx, t - 1)
    state = binarize(gripper, opts.gripper_threshold)
    keep = [0]
    for i in range(1, t):
        changed = state[i] != state[i - 1] or (i + 1 < t and state[i + 1] != state[i])
        moved = np.max(np.abs(qpos[i, :-1] - qpos[keep[-1], :-1])) > opts.keyframe_joint_delta
        if changed or moved or i == t - 1:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def shift_actions(state: np.ndarray, control: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(state samples, action samples, n): RoboTwin's rule action[t] = state[t+1] (T-1 samples), or the
    recorded command (T samples)."""
    if source == "next_state":
        return state[:-1], state[1:], len(state) - 1
    return state, control, len(state)
