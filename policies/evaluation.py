"""Offline scores shared by the policies: action MSE per joint and for the gripper (the last action dim), gripper
open/close accuracy, a PNG per episode of predicted vs recorded trajectories, and eval.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policies.context import host_paths_in


@dataclass
class EpisodeResult:
    episode: int
    mse_per_joint: list[float]
    gripper_mse: float
    gripper_accuracy: float
    plot: str | None


def score_episode(pred: np.ndarray, recorded: np.ndarray, episode: int, out_dir: Path, plots: bool = True,
                  title: str = "") -> EpisodeResult:
    """(T, D) predicted and recorded actions of one episode; the gripper is the last dim, open above 0.5.
    `title`: what was evaluated (the checkpoint and its weights), in the plot's title."""
    err = (pred - recorded) ** 2
    grip_ok = (pred[:, -1] >= 0.5) == (recorded[:, -1] >= 0.5)
    mse = err.mean(0).tolist()
    plot = _plot(pred, recorded, out_dir / f"episode{episode}.png", f"episode {episode}" + (f", {title}" if title else ""),
                 mse) if plots else None
    return EpisodeResult(episode, mse[:-1], float(mse[-1]), float(grip_ok.mean()), plot)


def summarize(results: list[EpisodeResult], out_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    summary: dict[str, Any] = {
        **(extra or {}),
        "episodes": [r.__dict__ for r in results],
        "mse_joints": float(np.mean([np.mean(r.mse_per_joint) for r in results])) if results else None,
        "mse_per_joint": np.mean([r.mse_per_joint for r in results], axis=0).tolist() if results else [],
        "gripper_mse": float(np.mean([r.gripper_mse for r in results])) if results else None,
        "gripper_accuracy": float(np.mean([r.gripper_accuracy for r in results])) if results else None,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    # Paths as the user's machine names them (a step in a container sees /job/...).
    summary = host_paths_in(summary)
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=2))
    return summary


def _plot(pred: np.ndarray, rec: np.ndarray, path: Path, title: str, mse: list[float]) -> str:
    from policies.curves import pyplot, save_figure

    plt = pyplot()
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
        name = "gripper (0 closed, 1 open)" if d == dims - 1 else f"joint {d + 1} (rad)"
        ax.set_title(f"{name}   MSE {mse[d]:.2e}", fontsize=9)
        ax.set_xlabel("frame", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title}: predicted vs recorded actions (MSE over the episode)")
    return str(save_figure(fig, path))
