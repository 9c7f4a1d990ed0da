"""The image encoder: SigLIP (so400m-patch14-384 in production) loaded from a local folder with transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from policies.rdt.images import ImagePrep


class SiglipTower:
    """Images -> patch tokens (B, patches, hidden): 729 x 1152 for so400m-patch14-384. Frozen, in eval mode.
    The encoder is policies/rdt/siglip.py's (transformers' output to float tolerance), eager: on an H200 its bf16
    kernels (cuDNN attention, the GELU epilogue, the fused add + LayerNorm) beat torch.compile's both on a training
    batch (129.7 against 158.6 ms, 96 images) and inside act's CUDA graph (4.76 against 5.53 ms, 3 images;
    docs/rdt.md, fifteenth session)."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        from policies.rdt import siglip

        if not (path / "config.json").is_file():
            msg = f"{path}: no SigLIP model here (config.json missing); set weights.siglip to a local folder"
            raise FileNotFoundError(msg)
        self.model = siglip.load(path, device, dtype)
        self.prep = ImagePrep(path)
        self.hidden_size: int = self.model.hidden_size
        self.num_patches: int = self.model.num_patches
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) pixel values (ImagePrep.pixels) -> (N, patches, hidden)."""
        out: torch.Tensor = self.model(pixels.to(self.device, self.dtype))
        return out

    def __call__(self, frames: list[np.ndarray]) -> torch.Tensor:
        return self.encode(self.prep.pixels(frames))


def save_tiny_siglip(path: Path, image_size: int = 28, patch: int = 14, hidden: int = 16, seed: int = 0) -> Path:
    """A tiny randomly initialised SigLIP vision model and its image processor, saved like a real checkpoint."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                             num_attention_heads=2, image_size=image_size, patch_size=patch)
    path.mkdir(parents=True, exist_ok=True)
    SiglipVisionModel(cfg).save_pretrained(str(path))
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(str(path))
    return path
