"""RDT inference: `load(checkpoint) -> RdtPolicy` with `reset()` and `act(obs, instruction_embedding)`.

The policy keeps the last `img_history_size` frames of each camera slot (a frame it has not seen yet, or a slot the
robot lacks, is the background image, as in training), encodes them with the SigLIP from the checkpoint's config,
maps the robot state into the unified vector, samples a chunk with DPM-Solver++ and maps it back to robot units:
(chunk, D) for a D-dimensional robot (64 x 8 for the Franka).
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.rdt import checkpoints
from policies.rdt.convert import SLOTS
from policies.rdt.model import RdtConfig, RdtRunner, predict_action, schedulers
from policies.rdt.state_space import StateMap
from policies.rdt.weights import checkpoint_weights, load_strict, read_state_dict


def resolve(path: Path, name: str = "latest") -> Path:
    """A checkpoint-<step>/ folder: `path` itself, or `name` ("latest" or a folder name) inside it."""
    if checkpoints.COMPLETE and (path / checkpoints.COMPLETE).is_file():
        return path
    if name != "latest":
        folder = path / name
        if not (folder / checkpoints.COMPLETE).is_file():
            msg = f"{folder}: not a complete RDT checkpoint"
            raise FileNotFoundError(msg)
        return folder
    found = checkpoints.latest(path)
    if found is None:
        msg = f"no complete RDT checkpoint in {path}; train first (`runner train JOB`)"
        raise FileNotFoundError(msg)
    return found[1]


class RdtPolicy:
    def __init__(self, model: RdtRunner, meta: dict[str, Any], device: torch.device, dtype: torch.dtype,
                 siglip: Path | None = None) -> None:
        from policies.rdt.vision import SiglipTower

        self.model, self.meta, self.device, self.dtype = model, meta, device, dtype
        self.cfg: RdtConfig = model.cfg
        self.map = StateMap(meta["state_map"]["name"], tuple(meta["state_map"]["indices"]))
        self.history = int(meta["img_history_size"])
        self.ctrl_freq = float(meta["ctrl_freq"])
        self.tower = SiglipTower(siglip or Path(meta["siglip"]), device, dtype)
        self.sampler = schedulers(self.cfg)[1]
        self.frames: deque[dict[str, np.ndarray]] = deque(maxlen=self.history)
        self.generator = torch.Generator(device).manual_seed(0)

    def reset(self, seed: int = 0) -> None:
        self.frames.clear()
        self.generator.manual_seed(seed)

    def act(self, obs: dict[str, Any], instruction_embedding: torch.Tensor) -> np.ndarray:
        """obs: {"qpos": (D,), "images": {slot: (H, W, 3) uint8}} -> (chunk, D) actions in robot units."""
        self.frames.append(dict(obs.get("images", {})))
        history: list[dict[str, np.ndarray] | None] = [None] * (self.history - len(self.frames)) + list(self.frames)
        return self.predict(np.asarray(obs["qpos"], np.float32), history, instruction_embedding)

    @torch.no_grad()
    def predict(self, qpos: np.ndarray, history: list[dict[str, np.ndarray] | None],
                embedding: torch.Tensor) -> np.ndarray:
        """One chunk from the state and `img_history_size` frames (oldest first; None or a missing slot: background)."""
        prep = self.tower.prep
        frames = [(f or {}).get(slot) for f in history for slot in SLOTS]
        pixels = prep.pixels([img if img is not None else prep.blank() for img in frames])
        img = self.tower.encode(pixels).reshape(1, -1, self.tower.hidden_size).to(self.dtype)
        lang = embedding.to(self.device, self.dtype)
        lang = lang[None] if lang.ndim == 2 else lang
        lang_mask = torch.ones(lang.shape[:2], dtype=torch.bool, device=self.device)
        state = torch.from_numpy(self.map.to_unified(qpos[None]))[None].to(self.device, self.dtype)
        mask = torch.from_numpy(self.map.indicator())[None, None].to(self.device, self.dtype)
        freq = torch.tensor([self.ctrl_freq], device=self.device, dtype=self.dtype)
        out = predict_action(self.model, self.sampler, lang, lang_mask, img, state, mask, freq, generator=self.generator)
        return self.map.from_unified(out[0].float().cpu().numpy())


def load(checkpoint: Path | str, device: str | torch.device | None = None, weights: str = "ema",
         siglip: Path | None = None, dtype: torch.dtype | None = None) -> RdtPolicy:
    """The policy from a checkpoint-<step>/ folder (or the newest one in a checkpoints folder)."""
    folder = resolve(Path(checkpoint))
    meta = json.loads((folder / "config.json").read_text())
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    model = RdtRunner(RdtConfig(**meta["model"]))
    source = checkpoint_weights(folder, weights)
    load_strict(model, read_state_dict(source), source)
    return RdtPolicy(model.to(dev, dt).eval(), meta, dev, dt, siglip)
