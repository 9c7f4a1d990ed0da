"""RDT on the robot: the camera frame in the slot the checkpoint trained it in, the instruction's embedding, and
img_history_size frames of history (unseen ones are the background, as in training)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from policies.deployment import state_as_trained


class RdtAdapter:
    kind = "rdt"

    def __init__(self, policy: Any, conversion: Mapping[str, Any], slots: Mapping[str, str],
                 instruction: torch.Tensor) -> None:
        self.policy, self.conversion, self.instruction = policy, dict(conversion), instruction
        self.slot = next((s for s, cam in slots.items() if cam == conversion.get("camera")), "cam_high")
        self.window = int(policy.history)
        self.chunk = int(policy.cfg.horizon)

    def observation(self, joints: np.ndarray, rgb: np.ndarray, depth: np.ndarray) -> dict[str, Any]:
        return {"qpos": state_as_trained(joints, self.conversion), "images": {self.slot: rgb}}

    def act(self, window: list[dict[str, Any]]) -> np.ndarray:
        recent = window[-self.window:]
        history: list[dict[str, np.ndarray] | None] = [None] * (self.window - len(recent)) + [o["images"] for o in recent]
        return np.asarray(self.policy.predict(recent[-1]["qpos"], history, self.instruction))
