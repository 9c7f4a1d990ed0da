"""Compatibility with upstream DP3 / RoboTwin: export a checkpoint to their payload layout, import theirs, and the
eval-driver contract (`get_model`, `eval`, `reset_model`) so RoboTwin's `eval.sh` can run a checkpoint from here.

Upstream's payload (TrainDP3Workspace.save_checkpoint, torch.save with dill):
    {"cfg": <OmegaConf>, "state_dicts": {"model", "ema_model", "optimizer"}, "pickles": {"global_step", "epoch"}}
State-dict names are the same on both sides (see model.py), so the key map is the identity and loads are strict.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.dp3.infer import Policy, load, model_from_payload


def export_upstream(checkpoint: Path, out: Path) -> Path:
    """Write `out` in upstream's payload layout from a checkpoint written by `runner train`."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model_cfg = payload["cfg"]["model"]
    cfg: Any = {
        "_target_": "train_dp3.TrainDP3Workspace", "horizon": model_cfg["horizon"],
        "n_obs_steps": model_cfg["n_obs_steps"], "n_action_steps": model_cfg["n_action_steps"],
        "policy": {"_target_": "diffusion_policy_3d.policy.dp3.DP3", "use_pc_color": model_cfg["use_pc_color"],
                   "encoder_output_dim": model_cfg["encoder_output_dim"], "down_dims": list(model_cfg["down_dims"]),
                   "diffusion_step_embed_dim": model_cfg["diffusion_step_embed_dim"],
                   "kernel_size": model_cfg["kernel_size"], "n_groups": model_cfg["n_groups"],
                   "condition_type": "film", "num_inference_steps": model_cfg["num_inference_steps"]},
        "shape_meta": {"obs": {"point_cloud": {"shape": [model_cfg["num_points"], model_cfg["point_channels"]]},
                               "agent_pos": {"shape": [model_cfg["state_dim"]]}},
                       "action": {"shape": [model_cfg["action_dim"]]}},
    }
    try:
        from omegaconf import OmegaConf  # upstream reads cfg attributes: an OmegaConf where it is installed

        cfg = OmegaConf.create(cfg)
    except ImportError:
        pass
    sd = payload["state_dicts"]
    out_payload = {
        "cfg": cfg,
        "state_dicts": {"model": sd["model"], "ema_model": sd["ema_model"] or sd["model"], "optimizer": sd["optimizer"]},
        "pickles": {"global_step": pickle.dumps(payload["pickles"]["global_step"]),
                    "epoch": pickle.dumps(payload["pickles"]["epoch"])},  # dill reads plain pickles
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(out_payload, tmp)
    tmp.replace(out)
    return out


def import_upstream(path: Path, like: Path, device: str = "cpu") -> torch.nn.Module:
    """Load an upstream checkpoint's EMA weights strictly into this repo's model, sized like checkpoint `like`."""
    ours = torch.load(like, map_location=device, weights_only=False)
    theirs = torch.load(path, map_location=device, weights_only=False)
    model = model_from_payload(ours, torch.device(device), use_ema=True)
    model.load_state_dict(theirs["state_dicts"]["ema_model"], strict=True)
    return model


# RoboTwin's eval driver (script/eval_policy.py) calls these three with a policy folder's deploy_policy.yml args.
def get_model(usr_args: dict[str, Any]) -> Policy:
    return load(Path(usr_args["checkpoint"]), usr_args.get("device"))


def encode_obs(observation: dict[str, Any]) -> dict[str, np.ndarray]:
    return {"agent_pos": np.asarray(observation["joint_action"]["vector"]), "point_cloud": np.asarray(observation["pointcloud"])}


def eval(task_env: Any, model: Policy, observation: dict[str, Any]) -> None:  # RoboTwin names it eval
    for action in model.act(encode_obs(observation)):
        task_env.take_action(action)
        model.observe(encode_obs(task_env.get_obs()))  # as upstream: the history follows every executed action


def reset_model(model: Policy) -> None:
    model.reset()
