"""Offline evaluation on held-out episodes: action MSE per joint and for the gripper, gripper open/close accuracy,
a PNG per episode of predicted vs recorded trajectories, and a JSON summary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.dp3.data import ReplayData
from policies.dp3.model import DP3


@dataclass
class EpisodeResult:
    episode: int
    mse_per_joint: list[float]
    gripper_mse: float
    gripper_accuracy: float
    plot: str | None


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
             seed: int = 0, plots: bool = True) -> dict[str, Any]:
    """Predict the next action at every frame of each episode and compare with what was recorded."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(data.state.device).manual_seed(seed)
    results = []
    for ep in episodes:
        pc, pos, recorded = episode_windows(data, ep, model.cfg.n_obs_steps)
        pred = np.concatenate([model.predict_action(pc[i:i + batch], pos[i:i + batch], generator=gen)[:, 0].float().cpu().numpy()
                               for i in range(0, len(pc), batch)])
        err = (pred - recorded) ** 2
        grip_ok = (pred[:, -1] >= 0.5) == (recorded[:, -1] >= 0.5)
        plot = _plot(pred, recorded, out_dir / f"episode{ep}.png", ep) if plots else None
        results.append(EpisodeResult(ep, err[:, :-1].mean(0).tolist(), float(err[:, -1].mean()),
                                     float(grip_ok.mean()), plot))
    summary: dict[str, Any] = {
        "episodes": [r.__dict__ for r in results],
        "mse_joints": float(np.mean([np.mean(r.mse_per_joint) for r in results])) if results else None,
        "mse_per_joint": np.mean([r.mse_per_joint for r in results], axis=0).tolist() if results else [],
        "gripper_mse": float(np.mean([r.gripper_mse for r in results])) if results else None,
        "gripper_accuracy": float(np.mean([r.gripper_accuracy for r in results])) if results else None,
    }
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=2))
    return summary


def _plot(pred: np.ndarray, rec: np.ndarray, path: Path, episode: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = pred.shape[1]
    cols = 4
    rows = -(-dims // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for d in range(rows * cols):
        ax = axes[d // cols][d % cols]
        if d >= dims:
            ax.axis("off")
            continue
        ax.plot(rec[:, d], label="recorded", color="black", linewidth=1.5)
        ax.plot(pred[:, d], label="predicted", color="tab:orange", linewidth=1.2, linestyle="--")
        ax.set_title("gripper" if d == dims - 1 else f"joint {d + 1}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"episode {episode}: predicted vs recorded actions")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
