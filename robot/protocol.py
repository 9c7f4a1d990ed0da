"""The robot and camera interfaces GELLO's code speaks (gello/robots/robot.py, gello/zmq_core/*), as Protocols.

Wire format (ZMQ REQ/REP, pickle): a robot request is `{"method": name, "args": {...}}` with methods `num_dofs`,
`get_joint_state`, `command_joint_state` (`{"joint_state": array}`) and `get_observations`; an unknown method
gets `{"error": "Invalid method"}`. A camera request is the pickled image size (or None); the reply is
`(rgb, depth)`. GELLO's launch scripts put the robot on port 6001 and cameras on 5000, 5001, ...
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

ROBOT_PORT = 6001  # experiments/launch_nodes.py and run_env.py
CAMERA_PORT = 5000  # launch_camera_nodes.py: the first camera


class Robot(Protocol):
    def num_dofs(self) -> int: ...

    def get_joint_state(self) -> np.ndarray: ...

    def command_joint_state(self, joint_state: np.ndarray) -> None: ...

    def get_observations(self) -> dict[str, Any]: ...


class Camera(Protocol):
    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """(rgb (H,W,3) uint8, depth (H,W[,1]) uint16 in the camera's depth units)."""
        ...


#: Franka Panda joint limits (rad), from Franka's datasheet; the gripper is [0, 1] in GELLO's convention.
PANDA_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973, 0.0])
PANDA_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973, 1.0])


class PolicyAdapter(Protocol):
    """What the control loop needs from a policy (policies/<name>/adapter.py implement it; robot/ knows none)."""

    kind: str  #: the policy's name, for messages
    window: int  #: observations the policy sees per call (the newest last)
    chunk: int  #: actions a call returns

    def observation(self, joints: np.ndarray, rgb: np.ndarray, depth: np.ndarray) -> dict[str, Any]:
        """One observation as the policy was trained on, from the robot's joints and a camera frame."""
        ...

    def act(self, window: list[dict[str, Any]]) -> np.ndarray:
        """(chunk, 8) joint + gripper targets from the last `window` observations."""
        ...
