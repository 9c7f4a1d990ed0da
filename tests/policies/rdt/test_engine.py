"""The fused one-GPU engine against the arithmetic upstream trains with: the same losses from the same seed
within bf16 tolerance, its checkpoint restoring the next step exactly, and the refusals between engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from policies.rdt.config import RdtTrain
from policies.rdt.engine import MODEL_FILE, AccelerateEngine, FusedEngine, ResumeError, make_accelerator
from policies.rdt.launch import fused_applies
from policies.rdt.model import RdtConfig, RdtRunner, schedulers
from policies.rdt.train import _loss

CFG = RdtConfig(hidden_size=64, depth=2, num_heads=4, horizon=8, lang_token_dim=32, img_token_dim=16,
                max_lang_cond_len=16, img_cond_len=2 * 4)


class Tokens:
    """A stand-in image tower: fixed tokens per image index (the engines, not SigLIP, are under test)."""

    hidden_size = 16

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :64].reshape(-1, 4, 16)


def batches(steps: int, n: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"images": torch.randn(n, 2, 3, 8, 8, generator=g), "lang_embeds": torch.randn(n, 5, 32, generator=g),
             "lang_attn_mask": torch.ones(n, 5, dtype=torch.bool), "states": torch.randn(n, 1, 128, generator=g),
             "actions": torch.randn(n, CFG.horizon, 128, generator=g), "state_elem_mask": torch.ones(n, 128),
             "ctrl_freqs": torch.full((n,), 25.0)} for _ in range(steps)]


def opts(**over: Any) -> RdtTrain:
    return RdtTrain.model_validate({"learning_rate": 1e-3, "zero_stage": 0, **over})


def run(engine: Any, data: list[dict[str, torch.Tensor]], dtype: torch.dtype, start: int = 0) -> list[float]:
    alphas = torch.as_tensor(schedulers(CFG)[0].alphas_cumprod, dtype=torch.float32)  # type: ignore[attr-defined]
    losses = []
    for i, b in enumerate(data):
        gen = torch.Generator().manual_seed(start + i)
        loss = engine.step([(b, gen)], lambda m, bb, g: _loss(m, Tokens(), bb, alphas, CFG, dtype, g))
        losses.append(float(loss.detach()))
    return losses


def model() -> RdtRunner:
    torch.manual_seed(0)
    return RdtRunner(CFG)


def test_fused_losses_follow_the_fp32_reference_within_bf16_tolerance() -> None:
    data = batches(8)
    acc, _, _ = make_accelerator(opts(), fused=False)
    ref = run(AccelerateEngine(acc, model(), opts(), deepspeed=False), data, torch.float32)
    fused_acc, _, _ = make_accelerator(opts(), fused=True)
    fused = run(FusedEngine(fused_acc, model(), opts(), compile=False), data, torch.bfloat16)
    assert ref[0] == pytest.approx(fused[0], rel=2e-2)  # the same weights, rounded to bf16
    assert fused == pytest.approx(ref, rel=5e-2)
    assert ref[-1] < ref[0] and fused[-1] < fused[0]  # both learn


def test_fused_checkpoint_restores_the_next_step_exactly(tmp_path: Path) -> None:
    data = batches(6)
    acc, _, _ = make_accelerator(opts(), fused=True)
    whole = run(FusedEngine(acc, model(), opts(), compile=False), data, torch.bfloat16)
    first = FusedEngine(acc, model(), opts(), compile=False)
    run(first, data[:3], torch.bfloat16)
    first.save(tmp_path / "checkpoint-3")
    assert (tmp_path / "checkpoint-3" / MODEL_FILE).is_file()
    second = FusedEngine(acc, model(), opts(), compile=False)
    second.load(tmp_path / "checkpoint-3")
    assert run(second, data[3:], torch.bfloat16, start=3) == whole[3:]
    with pytest.raises(ResumeError, match="written by the fused one-GPU engine"):
        AccelerateEngine(acc, model(), opts(), deepspeed=False).load(tmp_path / "checkpoint-3")
    (tmp_path / "other").mkdir()
    with pytest.raises(ResumeError, match="not the fused one-GPU engine: resume it with engine: accelerate"):
        second.load(tmp_path / "other")


def test_which_engine_runs() -> None:
    assert fused_applies("auto", 1, True, "bf16")
    assert not fused_applies("auto", 2, True, "bf16") and not fused_applies("auto", 1, False, "no")
    assert not fused_applies("accelerate", 1, True, "bf16")
    with pytest.raises(ValueError, match="engine: fused runs one process on one GPU in bf16"):
        fused_applies("fused", 1, False, "no")
