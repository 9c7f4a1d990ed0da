"""Fine-tuning samples from the RDT episode files policies/rdt/convert.py writes, with upstream's sampling rules
(data/hdf5_vla_dataset.py): episodes drawn in proportion to their length; a step drawn from the first one where a
joint has moved more than 0.01 on; a 64-step action chunk, edge-padded; the last `img_history_size` frames of every
camera slot, front-padded, with masks; everything mapped into the unified 128-d vector; one of the episode's
instruction embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from policies.rdt.convert import MOVE_EPS, SLOTS
from policies.rdt.state_space import StateMap
from robot.formats import decode_jpeg


@dataclass
class EpisodeIndex:
    path: Path
    length: int
    first_idx: int
    embeddings: list[Path]


def index_episodes(root: Path) -> list[EpisodeIndex]:
    """Every `episode_<i>/episode_<i>.hdf5` under `root`, with where its motion starts."""
    out = []
    for path in sorted(root.glob("episode_*/episode_*.hdf5"), key=lambda p: int(p.stem.split("_")[1])):
        with h5py.File(path, "r") as f:
            qpos = f["observations/qpos"][()]
        moved = np.nonzero(np.any(np.abs(qpos - qpos[:1]) > MOVE_EPS, axis=1))[0]
        if not len(moved):
            msg = f"{path}: found no qpos that moves more than {MOVE_EPS} (re-run convert: it refuses such episodes)"
            raise ValueError(msg)
        out.append(EpisodeIndex(path, len(qpos), int(moved[0]), sorted((path.parent / "instructions").glob("lang_embed_*.pt"))))
    if not out:
        msg = f"no RDT episodes (episode_*/episode_*.hdf5) under {root}; run `runner convert JOB` first"
        raise FileNotFoundError(msg)
    return out


class RdtSamples:
    """Draws training samples; deterministic for a numpy Generator."""

    def __init__(self, root: Path, state_map: StateMap, chunk: int = 64, img_history: int = 2,
                 episodes: list[EpisodeIndex] | None = None) -> None:
        self.episodes = episodes if episodes is not None else index_episodes(root)
        self.map, self.chunk, self.history = state_map, chunk, img_history
        lengths = np.array([e.length for e in self.episodes], dtype=np.float64)
        self.weights = lengths / lengths.sum()

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        ep = self.episodes[int(rng.choice(len(self.episodes), p=self.weights))]
        step = int(rng.integers(max(ep.first_idx - 1, 0), ep.length))
        return self.at(ep, step, rng)

    def at(self, ep: EpisodeIndex, step: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        with h5py.File(ep.path, "r") as f:
            qpos = f["observations/qpos"][()].astype(np.float32)
            action = f["action"][()].astype(np.float32)
            frames = range(step - self.history + 1, step + 1)
            images, masks = {}, {}
            for slot in SLOTS:
                valid = f[f"observations/images_mask/{slot}"][()]
                data = f[f"observations/images/{slot}"]
                images[slot] = [decode_jpeg(data[max(i, 0)]) for i in frames]
                masks[slot] = np.array([i >= 0 and bool(valid[i]) for i in frames])
        self.map.check(qpos.shape[1])
        actions = action[step:step + self.chunk]
        if len(actions) < self.chunk:
            actions = np.concatenate([actions, np.repeat(actions[-1:], self.chunk - len(actions), axis=0)])
        embedding = None
        if ep.embeddings:
            k = int(rng.integers(len(ep.embeddings))) if rng is not None else 0
            embedding = ep.embeddings[k]
        return {
            "state": self.map.to_unified(qpos[step:step + 1]), "actions": self.map.to_unified(actions),
            "state_indicator": self.map.indicator(), "state_std": self.map.to_unified(qpos.std(0)),
            "state_mean": self.map.to_unified(qpos.mean(0)), "images": images, "image_masks": masks,
            "lang_embed_path": embedding, "episode": ep.path.parent.name, "step": step,
        }


def dataset_stat(episodes: list[EpisodeIndex], state_map: StateMap, name: str = "agilex") -> dict[str, dict[str, list[float]]]:
    """upstream's dataset_stat.json entry (computed here as part of the step, not by a separate script)."""
    parts = []
    for e in episodes:
        with h5py.File(e.path, "r") as f:
            parts.append(f["observations/qpos"][()])
    qpos = np.concatenate(parts)
    unified = state_map.to_unified(qpos.astype(np.float32))
    return {name: {"state_mean": unified.mean(0).tolist(), "state_std": unified.std(0).tolist(),
                   "state_min": unified.min(0).tolist(), "state_max": unified.max(0).tolist()}}
