"""Observations exactly as training saw them, from what the checkpoint recorded about its data (the conversion
record: camera, point-cloud pipeline and intrinsics, crop, points, gripper binarisation), and the policy call.
A deploy job whose own preprocessing differs from the checkpoint's is refused with both values named."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from policies.data.pointcloud import CloudSpec, clouds
from policies.data.transform import binarize

#: Conversion fields that change what the policy sees; compared between the deploy job and the checkpoint.
COMPARED = ("camera", "binarize_gripper", "gripper_threshold")
CLOUD_COMPARED = ("fx", "fy", "cx", "cy", "depth_scale", "num_points", "crop_min", "crop_max", "extrinsics")


class PreprocessingMismatch(ValueError):
    """The deploy job would build observations differently from the data the policy was trained on."""


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    return round(float(v), 9) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def check_preprocessing(trained: Mapping[str, Any], deploy: Mapping[str, Any], where: str) -> None:
    """Every field the deploy job sets must equal the training record's value."""
    diffs = []
    for key in COMPARED:
        if key in deploy and key in trained and _norm(deploy[key]) != _norm(trained[key]):
            diffs.append(f"{key}: deploy job {deploy[key]!r}, checkpoint {trained[key]!r}")
    t_cloud, d_cloud = trained.get("pointcloud") or {}, deploy.get("pointcloud") or {}
    for key in CLOUD_COMPARED:
        if key in d_cloud and key in t_cloud and _norm(d_cloud[key]) != _norm(t_cloud[key]):
            diffs.append(f"pointcloud.{key}: deploy job {d_cloud[key]!r}, checkpoint {t_cloud[key]!r}")
    if diffs:
        msg = (f"{where}: the deploy preprocessing differs from the checkpoint's training data:\n  " + "\n  ".join(diffs)
               + "\nuse the job the checkpoint was trained with, or retrain on data converted with these settings")
        raise PreprocessingMismatch(msg)


def state_as_trained(joints: np.ndarray, conversion: Mapping[str, Any]) -> np.ndarray:
    """The robot's 8 values as the converter stored them: the gripper binarised when the data was."""
    out = np.asarray(joints, dtype=np.float32).copy()
    if conversion.get("binarize_gripper"):
        out[-1] = binarize(out[-1], float(conversion.get("gripper_threshold", 0.5)))
    return out


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
