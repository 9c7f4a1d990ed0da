"""DP3 offline evaluation: the next action predicted at every frame of held-out episodes, scored by
policies/evaluation.py (MSE per joint and for the gripper, gripper accuracy, plots, eval.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.dp3.data import ReplayData
from policies.dp3.model import DP3
from policies.evaluation import score_episode, summarize


def episode_windows(data: ReplayData, episode: int, n_obs: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Observation windows ending at every frame of one episode (edge-padded) and the recorded actions."""
    starts = np.concatenate([[0], data.episode_ends[:-1]])
    s, e = int(starts[episode]), int(data.episode_ends[episode])
    t = np.arange(s, e)
    idx = np.clip(t[:, None] + np.arange(-n_obs + 1, 1)[None, :], s, e - 1)
    flat = torch.from_numpy(idx.reshape(-1)).to(data.state.device)
    pc = data.point_cloud.index_select(0, flat).reshape(len(t), n_obs, *data.point_cloud.shape[1:])
    pos = data.state.index_select(0, flat).reshape(len(t), n_obs, -1)
    return pc, pos, data.action[s:e].cpu().numpy()


@torch.no_grad()
def evaluate(model: DP3, data: ReplayData, episodes: list[int], out_dir: Path, batch: int = 64,
             seed: int = 0, plots: bool = True, title: str = "") -> dict[str, Any]:
    """Predict the next action at every frame of each episode and compare with what was recorded."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(data.state.device).manual_seed(seed)
    results = []
    for ep in episodes:
        pc, pos, recorded = episode_windows(data, ep, model.cfg.n_obs_steps)
        pred = np.concatenate([model.predict_action(pc[i:i + batch], pos[i:i + batch], generator=gen)[:, 0].float().cpu().numpy()
                               for i in range(0, len(pc), batch)])
        results.append(score_episode(pred, recorded, ep, out_dir, plots, title))
    return summarize(results, out_dir)
