"""The image encoder: SigLIP (so400m-patch14-384 in production) loaded from a local folder with transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


class SiglipTower:
    """Images -> patch tokens (B, patches, hidden): 729 x 1152 for so400m-patch14-384."""

    def __init__(self, path: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        from transformers import SiglipImageProcessor, SiglipVisionModel

        if not (path / "config.json").is_file():
            msg = f"{path}: no SigLIP model here (config.json missing); set weights.siglip to a local folder"
            raise FileNotFoundError(msg)
        self.processor: Any = SiglipImageProcessor.from_pretrained(str(path))
        self.model: Any = SiglipVisionModel.from_pretrained(str(path), torch_dtype=dtype).to(device).eval()
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        return self.model(pixel_values=pixels).last_hidden_state  # type: ignore[no-any-return]


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
