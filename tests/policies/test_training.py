"""What a compiled run says before its silent first step: where the kernels are cached, and whether earlier runs
left any there."""

from __future__ import annotations

from pathlib import Path

from policies.training import compile_note


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
