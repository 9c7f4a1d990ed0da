from pathlib import Path

import pytest
import torch

from policies.rdt.checkpoints import RdtStore, checkpoint_dir, mark_complete
from policies.rdt.launch import render_deepspeed_config


def make(out: Path, step: int, complete: bool = True) -> Path:
    folder = checkpoint_dir(out, step)
    (folder / "pytorch_model").mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(1)}}, folder / "pytorch_model" / "mp_rank_00_model_states.pt")
    if complete:
        mark_complete(folder, {"step": step})
    return folder


def test_newest_complete_by_step_not_name_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for step in (500, 2500, 10000):
        make(tmp_path, step)
    make(tmp_path, 12500, complete=False)  # killed while saving
    (tmp_path / "checkpoint-notanumber").mkdir()
    assert RdtStore(tmp_path).latest() == (10000, tmp_path / "checkpoint-10000")  # not "checkpoint-500" by name
    assert "skipping" in caplog.text and "checkpoint-12500" in caplog.text
    assert RdtStore(tmp_path / "none").latest() is None


def test_total_limit_is_enforced(tmp_path: Path) -> None:
    for step in range(1000, 6000, 1000):
        make(tmp_path, step)
    removed = RdtStore(tmp_path).prune(2)
    assert sorted(p.name for p in removed) == ["checkpoint-1000", "checkpoint-2000", "checkpoint-3000"]
    assert [s for s, _ in RdtStore(tmp_path).entries()] == [5000, 4000]


def test_deepspeed_zero2_config() -> None:
    cfg = render_deepspeed_config(zero_stage=2, mixed_precision="bf16", grad_accum=4, micro_batch=32)
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["gradient_accumulation_steps"] == 4 and cfg["train_micro_batch_size_per_gpu"] == 32
