"""Training batches: one sample per index, drawn from a generator seeded by (seed, index), so a resumed run sees
exactly the batches an uninterrupted one would, whatever the number of DataLoader workers.

Per sample, upstream's fine-tuning rules (train/dataset.py): the control frequency, the state, the state mask and
each image are dropped with `cond_mask_prob` (classifier-free conditioning: frequency 0, the dataset's mean
state, an all-zero mask, the background image); the state gets Gaussian noise at `state_noise_snr` dB relative to
the episode's std; the language embedding is one of the episode's instructions or, dropped, the empty
instruction's embedding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.rdt.convert import SLOTS
from policies.rdt.dataset import RdtSamples
from policies.rdt.images import ImagePrep, augment


@dataclass(frozen=True)
class ItemRules:
    seed: int
    ctrl_freq: int
    cond_mask_prob: float
    state_noise_snr: float | None
    image_aug: bool


class TrainItems(torch.utils.data.Dataset[dict[str, Any]]):
    """Index k -> one training sample (tensors), deterministic in (seed, k)."""

    def __init__(self, samples: RdtSamples, siglip: Path, rules: ItemRules, state_mean: np.ndarray,
                 empty_lang: torch.Tensor) -> None:
        self.samples, self.siglip, self.rules = samples, siglip, rules
        self.state_mean, self.empty_lang = state_mean.astype(np.float32), empty_lang
        self._prep: ImagePrep | None = None

    def __len__(self) -> int:
        return 2**62

    @property
    def prep(self) -> ImagePrep:
        if self._prep is None:  # per worker process: the processor is loaded where it is used
            self._prep = ImagePrep(self.siglip)
        return self._prep

    def __getitem__(self, k: int) -> dict[str, Any]:
        r = self.rules
        rng = np.random.default_rng([r.seed, int(k)])
        s = self.samples.sample(rng)

        def keep() -> bool:  # one draw a condition, as upstream
            return bool(rng.random() > r.cond_mask_prob)

        ctrl_freq = r.ctrl_freq if keep() else 0
        state = s["state"].astype(np.float32)
        if r.state_noise_snr is not None:
            state = state + rng.normal(0.0, s["state_std"] / math.sqrt(10 ** (r.state_noise_snr / 10)), state.shape)
        state = state if keep() else self.state_mean[None]
        elem_mask = s["state_indicator"] if keep() else np.zeros_like(s["state_indicator"])
        frames, blank = [], []
        for i in range(self.samples.history):  # time-major, cameras in upstream's order within a time step
            for slot in SLOTS:
                img, valid = s["images"][slot][i], bool(s["image_masks"][slot][i])
                shown = valid and keep()
                frames.append((augment(img, rng) if r.image_aug else img) if shown else self.prep.blank(img))
                blank.append(not shown)
        lang = self.empty_lang
        if s["lang_embed_path"] is not None and keep():
            lang = torch.load(s["lang_embed_path"], map_location="cpu", weights_only=True)
        return {"states": torch.from_numpy(np.asarray(state, np.float32)), "actions": torch.from_numpy(s["actions"]),
                "state_elem_mask": torch.from_numpy(elem_mask.astype(np.float32)), "images": self.prep.pixels(frames),
                "image_blank": torch.tensor(blank), "ctrl_freq": float(ctrl_freq), "lang_embed": lang.float()}


#: Language embeddings are padded to a multiple of this many tokens.
LANG_BUCKET = 32

def unique_images(blank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which images of a batch SigLIP must encode, from the (B, K) flags of background images (absent cameras,
    dropped or not-yet-seen frames: all the same picture, the processor's mean colour): (select, source).
    `select` indexes the flattened images to encode: every shown one, then one background; `source[i]` is the row
    of that encoding image i's tokens are. With the lab's one camera, two thirds of a batch's images are background,
    and SigLIP encodes one of them, not all. (SigLIP runs eager in training, so the count needs no rounding to a
    few compiled shapes.)"""
    flat = blank.reshape(-1)
    shown = torch.nonzero(~flat).flatten()
    background = torch.nonzero(flat).flatten()
    if background.numel() <= 1:  # nothing to gain: all of them, in order
        return torch.arange(flat.numel()), torch.arange(flat.numel())
    select = torch.cat([shown, background[:1]])
    source = torch.full((flat.numel(),), shown.numel(), dtype=torch.long)
    source[shown] = torch.arange(shown.numel())
    return select, source


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack the samples; pad the language embeddings to the longest, rounded up to a multiple of LANG_BUCKET
    (few distinct shapes for a compiled model; masked positions change nothing), with an attention mask; and
    which images SigLIP encodes (unique_images)."""
    lengths = [it["lang_embed"].shape[0] for it in items]
    width = -(-max(lengths) // LANG_BUCKET) * LANG_BUCKET
    lang = torch.zeros(len(items), width, items[0]["lang_embed"].shape[-1], dtype=items[0]["lang_embed"].dtype)
    for i, it in enumerate(items):
        lang[i, : lengths[i]] = it["lang_embed"]
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    select, source = unique_images(torch.stack([it["image_blank"] for it in items]))
    return {"states": torch.stack([it["states"] for it in items]), "actions": torch.stack([it["actions"] for it in items]),
            "state_elem_mask": torch.stack([it["state_elem_mask"] for it in items]),
            "images": torch.stack([it["images"] for it in items]), "image_select": select, "image_source": source,
            "ctrl_freqs": torch.tensor([it["ctrl_freq"] for it in items]), "lang_embeds": lang, "lang_attn_mask": mask}


class StepIndices(torch.utils.data.Sampler[int]):
    """Sample indices of micro-batches `start`, `start`+1, ... (endless; the training loop stops drawing) for one
    rank: (micro * world + rank) * batch + i."""

    def __init__(self, start_micro: int, batch: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.batch, self.rank, self.world = start_micro, batch, rank, world

    def __iter__(self) -> Iterator[int]:
        micro = self.start
        while True:
            base = (micro * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)
            micro += 1
