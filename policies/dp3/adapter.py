"""DP3 on the robot: point clouds built from each RGB-D frame with the checkpoint's recorded pipeline, and the
last n_obs_steps observations (the first repeated, as upstream's runner) per chunk."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from policies.data.pointcloud import CloudSpec, clouds
from policies.deployment import PreprocessingMismatch, state_as_trained


class Dp3Adapter:
    kind = "dp3"

    def __init__(self, policy: Any, conversion: Mapping[str, Any]) -> None:
        self.policy, self.conversion = policy, dict(conversion)
        cloud = dict(conversion.get("pointcloud") or {})
        if not cloud:
            msg = "the checkpoint records no point-cloud settings (conversion.pointcloud): retrain with this runner"
            raise PreprocessingMismatch(msg)
        cloud["crop_min"] = tuple(cloud["crop_min"]) if cloud.get("crop_min") else None
        cloud["crop_max"] = tuple(cloud["crop_max"]) if cloud.get("crop_max") else None
        cloud["extrinsics"] = tuple(tuple(r) for r in cloud["extrinsics"]) if cloud.get("extrinsics") else None
        self.spec = CloudSpec(**cloud)
        self.window = int(policy.cfg.n_obs_steps)
        self.chunk = int(policy.cfg.n_action_steps)

    def observation(self, joints: np.ndarray, rgb: np.ndarray, depth: np.ndarray) -> dict[str, Any]:
        cloud = clouds(depth[None], rgb[None], self.spec, device=torch.device("cpu"))[0]
        return {"point_cloud": cloud, "agent_pos": state_as_trained(joints, self.conversion)}

    def act(self, window: list[dict[str, Any]]) -> np.ndarray:
        recent = window[-self.window:]
        recent = [recent[0]] * (self.window - len(recent)) + recent  # the first repeated, as upstream's runner
        return np.asarray(self.policy.predict_window(recent))
