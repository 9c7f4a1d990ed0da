"""Camera frames -> SigLIP pixel tensors as upstream's fine-tuning dataset prepares them (train/dataset.py):
a frame that is missing, masked, or dropped for classifier-free conditioning becomes the background (the
processor's mean colour); half of the valid frames are augmented (colour jitter, corruption or both); frames are
padded to a square with the background colour (`image_aspect_ratio: pad`), then resized and normalised by the
SigLIP processor saved with the encoder. The jitter ranges are torchvision's ColorJitter(0.3, 0.4, 0.5, 0.03);
the corruption is additive Gaussian noise (upstream's `image_corrupt` is not published with the fine-tuning code).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32)
_RGB = np.linalg.inv(_YIQ).astype(np.float32)


class ImagePrep:
    """The SigLIP processor from the encoder's folder plus upstream's background and padding rules."""

    def __init__(self, siglip: Path) -> None:
        """Reads the processor's numbers from preprocessor_config.json (transformers' SiglipImageProcessor
        defaults where a key is absent): the size, rescale factor, mean and std are all this needs."""
        config = siglip / "preprocessor_config.json"
        if not config.is_file():
            msg = f"{siglip}: no SigLIP image processor (preprocessor_config.json missing); set weights.siglip"
            raise FileNotFoundError(msg)
        cfg = json.loads(config.read_text())
        mean, std = list(cfg.get("image_mean", [0.5] * 3)), list(cfg.get("image_std", [0.5] * 3))
        self.background = np.array([int(x * 255) for x in mean], dtype=np.uint8)
        size = cfg.get("size", {"height": 224})
        self.side = int(size.get("height") or size.get("shortest_edge"))
        self.scale = float(cfg.get("rescale_factor", 1 / 255))
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
        self._on: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def blank(self, like: np.ndarray | None = None) -> np.ndarray:
        h, w = (like.shape[:2] if like is not None else (self.side, self.side))
        return np.broadcast_to(self.background, (h, w, 3)).copy()

    def pixels(self, frames: list[np.ndarray], device: torch.device | None = None) -> torch.Tensor:
        """(N, 3, side, side) float32 pixel values for N RGB uint8 frames: padded square, bicubic resize (antialiased,
        rounded to 8 bits as the processor's PIL path does), rescaled and normalised with the processor's numbers.
        The same torch code in training (CPU workers) and at inference (on the GPU, no PIL round trip)."""
        out = torch.empty((len(frames), 3, self.side, self.side), dtype=torch.float32, device=device)
        for i, frame in enumerate(frames):
            # decoded JPEGs are read-only arrays: torch takes a writable copy of those
            ok = frame.flags.writeable and frame.flags.c_contiguous
            out[i] = self.pixels_batch(torch.from_numpy(frame if ok else np.array(frame))[None].to(device))[0]
        return out

    def pixels_batch(self, frames: torch.Tensor) -> torch.Tensor:
        """pixels() for a (N, H, W, 3) uint8 tensor of same-sized frames, where it lies (a GPU at inference): one
        padding, one resize and one normalisation for the batch, so a CUDA graph can hold them with SigLIP."""
        n, h, w, _ = frames.shape
        side = max(h, w)
        x = frames.permute(0, 3, 1, 2).float()
        background, mean, std = self._constants(frames.device)
        if h != w:
            canvas = background.expand(n, 3, side, side).clone()
            top, left = (side - h) // 2, (side - w) // 2
            canvas[:, :, top:top + h, left:left + w] = x
            x = canvas
        if side != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0, 255).round()
        return (x * self.scale - mean) / std

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The background colour, mean and std where the frames are, copied there once (a CUDA graph capture
        cannot copy from the CPU)."""
        key = str(device)
        if key not in self._on:
            bg = torch.tensor(self.background, dtype=torch.float32).reshape(1, 3, 1, 1)
            self._on[key] = (bg.to(device), self.mean.to(device), self.std.to(device))
        return self._on[key]


def color_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness 0.3, contrast 0.4, saturation 0.5, hue 0.03, in a random order (torchvision's ranges)."""
    x = img.astype(np.float32) / 255.0
    for op in rng.permutation(4):
        if op == 0:
            x = x * rng.uniform(0.7, 1.3)
        elif op == 1:
            m = float((x @ _YIQ[0]).mean())
            x = (x - m) * rng.uniform(0.6, 1.4) + m
        elif op == 2:
            g = (x @ _YIQ[0])[..., None]
            x = (x - g) * rng.uniform(0.5, 1.5) + g
        else:
            angle = rng.uniform(-0.03, 0.03) * 2 * np.pi
            c, s = np.cos(angle), np.sin(angle)
            rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float32)
            x = x @ (_RGB @ rot @ _YIQ).T
        x = np.clip(x, 0.0, 1.0)
    return (x * 255.0 + 0.5).astype(np.uint8)


def corrupt(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(0.0, 12.0)
    return np.clip(img.astype(np.float32) + rng.normal(0.0, sigma, img.shape), 0, 255).astype(np.uint8)


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upstream's rule: half of the valid frames are augmented, with jitter only, corruption only, or both."""
    if rng.random() <= 0.5:
        return img
    kind = int(rng.integers(3))  # 0 corrupt only, 1 colour only, 2 both
    if kind != 0:
        img = color_jitter(img, rng)
    if kind != 1:
        img = corrupt(img, rng)
    return img
