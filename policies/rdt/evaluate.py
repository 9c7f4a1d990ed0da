"""RDT offline evaluation: on held-out episodes, a chunk is predicted every `stride` frames from the recorded state
and camera history; the first `stride` actions of each chunk are laid end to end and scored against what was
recorded (policies/evaluation.py: MSE per joint and gripper, gripper accuracy, plots, eval.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from policies.evaluation import EpisodeResult, score_episode, summarize
from policies.rdt.convert import SLOTS
from policies.rdt.infer import RdtPolicy
from robot.formats import decode_jpeg


def episode_embedding(episode_file: Path, width: int) -> torch.Tensor:
    found = sorted((episode_file.parent / "instructions").glob("lang_embed_*.pt"))
    if found:
        emb: torch.Tensor = torch.load(found[0], map_location="cpu", weights_only=True)
        return emb
    empty = episode_file.parent.parent / "empty_lang_embed.pt"
    if empty.is_file():
        loaded: torch.Tensor = torch.load(empty, map_location="cpu", weights_only=True)
        return loaded
    return torch.zeros(1, width)


def predict_episode(policy: RdtPolicy, path: Path, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, recorded) actions of one converted RDT episode, both (T, D)."""
    with h5py.File(path, "r") as f:
        qpos, recorded = f["observations/qpos"][()], f["action"][()]
        images = {s: f[f"observations/images/{s}"][()] for s in SLOTS}
        masks = {s: f[f"observations/images_mask/{s}"][()] for s in SLOTS}
    emb = episode_embedding(path, policy.cfg.lang_token_dim)
    pred = np.zeros_like(recorded)
    for t in range(0, len(recorded), stride):
        history: list[dict[str, np.ndarray] | None] = []
        for i in range(t - policy.history + 1, t + 1):
            history.append(None if i < 0 else {s: decode_jpeg(images[s][i]) for s in SLOTS if masks[s][i]})
        chunk = policy.predict(qpos[t].astype(np.float32), history, emb)
        n = min(stride, len(recorded) - t)
        pred[t:t + n] = chunk[:n]
    return pred, recorded


def evaluate(policy: RdtPolicy, episodes: list[Path], out_dir: Path, stride: int | None = None,
             plots: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    step = stride or policy.cfg.horizon
    results: list[EpisodeResult] = []
    for path in episodes:
        policy.reset()
        pred, recorded = predict_episode(policy, path, step)
        index = int(path.stem.split("_")[-1])
        title = f"{Path(str((extra or {}).get('checkpoint', ''))).name} ({(extra or {}).get('weights', '')} weights)"
        results.append(score_episode(pred, recorded, index, out_dir, plots, title if extra else ""))
    return summarize(results, out_dir, {"stride": step, "episode_files": [str(p) for p in episodes], **(extra or {})})
