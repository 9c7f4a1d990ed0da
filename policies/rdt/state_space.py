"""RDT's unified 128-d state/action vector (configs/state_vec.py upstream) and the Franka's place in it.

[0,10) right arm joint positions, 10 right gripper open, [15,25) right arm joint velocities, ... [50,60) left arm,
60 left gripper open, ... A single-arm robot uses the right-arm slots (upstream's un-prefixed aliases
`arm_joint_<i>_pos`, `gripper_open`). The mapping is data, checked against the episode's dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STATE_VEC_LEN = 128
RIGHT_ARM_JOINT_POS = tuple(range(0, 10))
RIGHT_GRIPPER_OPEN = 10


@dataclass(frozen=True)
class StateMap:
    """Where each entry of a robot's state vector goes in the unified vector."""

    name: str
    indices: tuple[int, ...]

    def check(self, dim: int) -> None:
        if dim != len(self.indices):
            msg = (f"the {self.name} mapping places {len(self.indices)} values in RDT's state vector, but the "
                   f"episodes have {dim}-dimensional states")
            raise ValueError(msg)

    def indicator(self) -> np.ndarray:
        """1.0 where the robot has a value, 0.0 for the absent dimensions."""
        mask = np.zeros(STATE_VEC_LEN, dtype=np.float32)
        mask[list(self.indices)] = 1.0
        return mask

    def to_unified(self, values: np.ndarray) -> np.ndarray:
        """(..., D) robot values -> (..., 128), zeros where the robot has nothing."""
        self.check(values.shape[-1])
        out = np.zeros((*values.shape[:-1], STATE_VEC_LEN), dtype=np.float32)
        out[..., list(self.indices)] = values
        return out

    def from_unified(self, unified: np.ndarray) -> np.ndarray:
        """(..., 128) -> (..., D): the inverse, used on predicted actions at inference."""
        return np.asarray(unified[..., list(self.indices)])


#: Franka Panda with gripper: 7 joints -> right-arm joints 0..6, gripper (1 = open) -> 10.
FRANKA = StateMap("franka", (*RIGHT_ARM_JOINT_POS[:7], RIGHT_GRIPPER_OPEN))
