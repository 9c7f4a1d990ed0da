"""DP3 inference: `load(checkpoint) -> Policy` with `reset()` and `act(obs) -> action chunk`, for deploy and eval."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.dp3.model import DP3, Dp3Config


def model_from_payload(payload: dict[str, Any], device: torch.device, use_ema: bool = True) -> DP3:
    cfg_dict = dict(payload["cfg"]["model"])
    cfg_dict["state_mlp_size"] = tuple(cfg_dict["state_mlp_size"])
    cfg_dict["down_dims"] = tuple(cfg_dict["down_dims"])
    model = DP3(Dp3Config(**cfg_dict))
    weights = payload["state_dicts"]["ema_model"] if use_ema and payload["state_dicts"].get("ema_model") else \
        payload["state_dicts"]["model"]
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval()


class Policy:
    """Keeps the last n_obs_steps observations (the first repeated until there are enough), as upstream's runner."""

    def __init__(self, model: DP3, payload: dict[str, Any], seed: int = 0) -> None:
        self.model = model
        self.cfg = model.cfg
        self.conversion: dict[str, Any] = payload["cfg"].get("conversion", {})
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.history: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=self.cfg.n_obs_steps)

    def reset(self) -> None:
        self.history.clear()

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """obs: point_cloud (P, C), agent_pos (D,) -> (n_action_steps, A) actions in robot units."""
        pc = np.asarray(obs["point_cloud"], dtype=np.float32)
        pos = np.asarray(obs["agent_pos"], dtype=np.float32)
        if pc.shape[0] != self.cfg.num_points or pos.shape[-1] != self.cfg.state_dim:
            msg = (f"observation point_cloud {pc.shape} / agent_pos {pos.shape} do not match the checkpoint "
                   f"({self.cfg.num_points} points, state dim {self.cfg.state_dim})")
            raise ValueError(msg)
        if not self.history:
            self.history.extend([(pc, pos)] * self.cfg.n_obs_steps)
        else:
            self.history.append((pc, pos))
        pcs = torch.from_numpy(np.stack([h[0] for h in self.history]))[None].to(self.device)
        poss = torch.from_numpy(np.stack([h[1] for h in self.history]))[None].to(self.device)
        actions = self.model.predict_action(pcs, poss, generator=self.generator)
        return actions[0].float().cpu().numpy()


def load(checkpoint: Path, device: str | torch.device | None = None) -> Policy:
    """A ready policy from a checkpoint written by `runner train` (EMA weights)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    payload = torch.load(checkpoint, map_location=dev, weights_only=False)
    return Policy(model_from_payload(payload, dev), payload)
