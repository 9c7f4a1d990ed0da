"""Tiny randomly initialised encoders for the sample job and tests: a T5 encoder with a word-level tokenizer and a
SigLIP vision model with its image processor, saved like the released folders so the real loading code reads them.
The runner makes them when a job's convert step sets `sample_if_missing` and a weights path does not exist."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from policies.rdt.embed import save_tiny_t5
from policies.rdt.vision import save_tiny_siglip


def make_missing(weights: Mapping[str, Path], instructions: list[str], say: Callable[[str], None] = print) -> list[str]:
    """Create weights.t5 / weights.siglip where the folder is missing; returns the names made."""
    makers: dict[str, Callable[[Path], Path]] = {
        "t5": lambda p: save_tiny_t5(p, " ".join(instructions).split() or ["task"]),
        "siglip": lambda p: save_tiny_siglip(p, image_size=28, patch=14, hidden=32),
    }
    made = []
    for name, make in makers.items():
        path = weights.get(name)
        if path is None or path.exists():
            continue
        say(f"generating a tiny random {name} in {path} (sample job: no real weights needed)")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        make(tmp)
        os.replace(tmp, path)
        made.append(name)
    return made
