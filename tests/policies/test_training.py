"""What a compiled run says before its silent first step (where the kernels are cached, and whether earlier runs
left any there), and what a checkpoint line says of its write."""

from __future__ import annotations

from pathlib import Path

from policies.training import checkpoint_line, compile_note


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
    quick = checkpoint_line(folder, 4.2, {"RUNNER_STOP_GRACE_S": "30"})
    assert quick == f"train: checkpoint {folder} (2.5 MB in 4.2 s)"
    slow = checkpoint_line(folder, 41.0, {"RUNNER_STOP_GRACE_S": "60"}).splitlines()
    assert slow[0] == f"train: checkpoint {folder} (2.5 MB in 41.0 s)"
    assert slow[1].startswith("warning: the checkpoint took 41 s to write, more than half the 60 s")
    assert "steps.train.stop_grace_s" in slow[1]
    assert "warning" not in checkpoint_line(folder, 41.0, {})  # outside the runner: no grace known
    single = tmp_path / "epoch=0001.ckpt"  # DP3 writes one file
    single.write_bytes(b"0" * 1500)
    assert checkpoint_line(single, 0.3, {}) == f"train: checkpoint {single} (1.5 kB in 0.3 s)"
