"""Training batches: SigLIP encodes each batch's shown images and one background, and the tokens every image gets
are the ones encoding all of them gives."""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.rdt.batches import ItemRules, TrainItems, collate, unique_images
from policies.rdt.convert import SLOTS
from policies.rdt.state_space import FRANKA
from policies.rdt.train import _loss


class OneCamera:
    """Samples as RdtSamples gives them for the lab's robot: the front camera only, the first frame not yet seen
    at an episode's start."""

    history, chunk = 2, 8

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        start = bool(rng.random() < 0.3)
        images = {s: [rng.integers(0, 255, (30, 40, 3), dtype=np.uint8) for _ in range(2)] for s in SLOTS}
        masks = {s: np.array([s == "cam_high" and not (start and i == 0) for i in range(2)]) for s in SLOTS}
        q = rng.normal(size=(1, 8)).astype(np.float32)
        return {"state": FRANKA.to_unified(q), "actions": FRANKA.to_unified(np.repeat(q, self.chunk, 0)),
                "state_indicator": FRANKA.indicator(), "state_std": np.ones(128, np.float32), "images": images,
                "image_masks": masks, "lang_embed_path": None}


def items(siglip: Path, image_aug: bool = True) -> TrainItems:
    rules = ItemRules(seed=3, ctrl_freq=25, cond_mask_prob=0.1, state_noise_snr=40.0, image_aug=image_aug)
    return TrainItems(OneCamera(), siglip, rules, np.zeros(128, np.float32), torch.zeros(1, 32))  # type: ignore[arg-type]


def test_unique_images_encode_the_shown_ones_and_one_background() -> None:
    blank = torch.tensor([[False, True, True, True, True, True], [True, True, True, False, True, True]])
    select, source = unique_images(blank)
    assert select.tolist() == [0, 9, 1]  # the 2 shown images, then one background
    assert source.tolist() == [0, 2, 2, 2, 2, 2, 2, 2, 2, 1, 2, 2]
    everything = torch.zeros(2, 6, dtype=torch.bool)
    assert [t.tolist() for t in unique_images(everything)] == [list(range(12))] * 2  # nothing to skip
    almost = torch.ones(2, 6, dtype=torch.bool)
    almost[:, :5] = False  # 10 shown of 12: 10 + one background saves one encoding
    assert unique_images(almost)[0].numel() == 11
    almost[0, 5] = False  # one background image: nothing to save
    assert [t.tolist() for t in unique_images(almost)] == [list(range(12))] * 2


def test_batch_tokens_equal_encoding_every_image(tmp_path: Path) -> None:
    from policies.rdt.model import RdtConfig
    from policies.rdt.vision import SiglipTower, save_tiny_siglip

    siglip = save_tiny_siglip(tmp_path / "siglip", hidden=16)
    data = items(siglip)
    batch = collate([data[k] for k in range(16)])
    blank = torch.stack([data[k]["image_blank"] for k in range(16)]).flatten()
    assert blank.float().mean() > 0.6  # the lab's one camera: most of a batch is background
    flat = batch["images"].flatten(0, 1)
    assert all(torch.equal(flat[i], flat[blank.nonzero()[0, 0]]) for i in blank.nonzero().flatten())  # one picture
    assert batch["image_select"].numel() < blank.numel() / 2

    tower = SiglipTower(siglip, torch.device("cpu"))
    seen: list[torch.Tensor] = []

    class Model:  # records the image tokens the loss hands the model
        def __call__(self, *args: torch.Tensor) -> torch.Tensor:
            seen.append(args[2])
            return args[2].sum() * 0

    cfg = RdtConfig(num_train_timesteps=10)
    alphas = torch.ones(10)
    everything = {k: v for k, v in batch.items() if k not in ("image_select", "image_source")}
    for b in (batch, everything):
        _loss(Model(), tower, b, alphas, cfg, torch.float32, torch.Generator().manual_seed(0))
    assert seen[0].shape == seen[1].shape == (16, 6 * tower.num_patches, tower.hidden_size)
    assert torch.allclose(seen[0], seen[1], atol=1e-5)
