"""A simulated Franka Panda behind GELLO's Robot protocol, for dry runs and tests: kinematic, joint limits,
first-order tracking of the commanded joints (time constant `tau`), and GELLO's Panda gripper conventions:
the observed gripper is width / 0.09 (1.0 = open) while the commanded gripper is 1.0 = closed."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from robot.protocol import PANDA_LOWER, PANDA_UPPER

HOME = np.array([0.0, -0.6, 0.0, -2.2, 0.0, 1.6, 0.8])


class SimFranka:
    def __init__(self, q0: np.ndarray | None = None, tau: float = 0.05, clock: Any = time.monotonic) -> None:
        q = np.concatenate([HOME, [1.0]]) if q0 is None else np.asarray(q0, dtype=np.float64).copy()
        self.q, self.target = q.copy(), q.copy()
        self.tau, self.clock = tau, clock
        self.t = clock()
        self.lock = threading.Lock()
        self.commands: list[np.ndarray] = []  # every command received, in the command convention

    def _advance(self) -> None:
        now = self.clock()
        alpha = 1.0 - np.exp(-max(0.0, now - self.t) / self.tau)
        self.q += (self.target - self.q) * alpha
        self.t = now

    def num_dofs(self) -> int:
        return 8

    def get_joint_state(self) -> np.ndarray:
        with self.lock:
            self._advance()
            return self.q.copy()

    def command_joint_state(self, joint_state: np.ndarray) -> None:
        cmd = np.asarray(joint_state, dtype=np.float64)
        if cmd.shape != (8,):
            msg = f"expected 8 joint values (7 joints + gripper), got shape {cmd.shape}"
            raise ValueError(msg)
        with self.lock:
            self._advance()
            self.commands.append(cmd.copy())
            target = cmd.copy()
            target[-1] = 1.0 - cmd[-1]  # Panda: command 1.0 = closed; observation 1.0 = open
            self.target = np.clip(target, PANDA_LOWER, PANDA_UPPER)

    def get_observations(self) -> dict[str, Any]:
        q = self.get_joint_state()
        return {"joint_positions": q, "joint_velocities": q.copy(), "ee_pos_quat": np.zeros(7),
                "gripper_position": q[-1:].copy()}
