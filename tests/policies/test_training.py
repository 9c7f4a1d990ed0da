"""What a compiled run says before its silent first step (where the kernels are cached, and whether earlier runs
left any there), and what a checkpoint line says of its write."""

from __future__ import annotations

from pathlib import Path

from policies.checkpoint_store import checkpoints_to_come
from policies.training import checkpoint_line, compile_note, disk_warning, tree_bytes


def test_a_cache_in_the_job_folder_is_named_empty_then_warm(tmp_path: Path) -> None:
    cache = tmp_path / ".compile-cache" / "inductor"
    env = {"TORCHINDUCTOR_CACHE_DIR": str(cache)}
    cold = compile_note("the first step compiles RDT's forward and backward", env)
    assert cold.startswith("train: the first step compiles RDT's forward and backward; kernels cached in ")
    assert str(cache) in cold and "empty: this run compiles everything" in cold
    (cache / "fxgraph").mkdir(parents=True)  # what inductor leaves behind
    assert "earlier runs' kernels are there" in compile_note("x", env)


def test_without_a_cache_variable_the_note_says_the_kernels_are_lost_with_the_container() -> None:
    note = compile_note("the first steps compile the training step", {})
    assert "cached under /tmp, which a container loses" in note


def test_a_checkpoint_line_gives_size_and_time_and_warns_when_the_write_nears_the_stop_grace(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-40"
    (folder / "ema").mkdir(parents=True)
    (folder / "pytorch_model" / "x").parent.mkdir()
    (folder / "pytorch_model" / "x").write_bytes(b"0" * 2_000_000)
    (folder / "ema" / "y").write_bytes(b"0" * 500_000)
    quick = checkpoint_line(folder, tree_bytes(folder), 4.2, {"RUNNER_STOP_GRACE_S": "30"})
    assert quick == f"train: checkpoint {folder} (2.5 MB in 4.2 s)"
    slow = checkpoint_line(folder, tree_bytes(folder), 41.0, {"RUNNER_STOP_GRACE_S": "60"}).splitlines()
    assert slow[0] == f"train: checkpoint {folder} (2.5 MB in 41.0 s)"
    assert slow[1].startswith("warning: the checkpoint took 41 s to write, more than half the 60 s")
    assert "steps.train.stop_grace_s" in slow[1]
    assert "warning" not in checkpoint_line(folder, tree_bytes(folder), 41.0, {})  # outside the runner: no grace known
    single = tmp_path / "epoch=0001.ckpt"  # DP3 writes one file
    single.write_bytes(b"0" * 1500)
    assert checkpoint_line(single, tree_bytes(single), 0.3, {}) == f"train: checkpoint {single} (1.5 kB in 0.3 s)"


def test_checkpoints_still_to_come_count_the_period_and_the_last_step() -> None:
    assert checkpoints_to_come(2500, 20000, 2500) == 7  # 5000 ... 20000
    assert checkpoints_to_come(2500, 20100, 2500) == 8  # and one at 20100
    assert checkpoints_to_come(20000, 20000, 2500) == 0
    assert checkpoints_to_come(40, 40, 100000) == 0  # the last step's checkpoint, off the period
    assert checkpoints_to_come(10, 40, 100000) == 1


def test_a_disk_too_small_for_the_checkpoints_to_come_is_said_once_with_the_numbers(tmp_path: Path) -> None:
    gb = 10**9
    # RDT-1B's 22 GB fused checkpoints, 40 kept (upstream's limit), 7 more to come: 7 x 22 GB more at the peak
    warning = disk_warning(tmp_path, 22 * gb, 40, 1, 7, free=100 * gb)
    assert warning is not None and "100.0 GB free" in warning and "154.0 GB more" in warning
    assert "steps.train.checkpoints_total_limit" in warning and "checkpointing_period" in warning
    assert disk_warning(tmp_path, 22 * gb, 40, 1, 7, free=160 * gb) is None
    # a limit of 3: at most 4 at once (the newest written before the oldest goes), 3 more than the one held
    assert disk_warning(tmp_path, 22 * gb, 3, 1, 7, free=67 * gb) is None
    assert "66.0 GB more" in (disk_warning(tmp_path, 22 * gb, 3, 1, 7, free=65 * gb) or "")
    assert disk_warning(tmp_path, 22 * gb, 3, 3, 0, free=0) is None  # nothing more to write
