"""Capture a function of tensors as one CUDA graph over static input buffers (DP3 and RDT inference).

One replay launches what would be thousands of small kernels from Python (a DP3 chunk's 10 U-Net passes, an
RDT chunk's adaptors and solver steps, a SigLIP pass). The function runs `warmup` times on a side stream first,
so lazy initialisation (cuBLAS handles, torch.compile's compilation and autotuning) is not captured."""

from __future__ import annotations

import functools
import os
import shutil
import sysconfig
from collections.abc import Callable
from pathlib import Path

import torch


class Graphed:
    def __init__(self, fn: Callable[..., torch.Tensor], example: dict[str, torch.Tensor], warmup: int = 2) -> None:
        self.inputs = {k: v.clone() for k, v in example.items()}
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(warmup):
                fn(**self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.out = fn(**self.inputs)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The output buffer, overwritten by the next call (clone what must outlive it)."""
        for k, v in inputs.items():
            self.inputs[k].copy_(v)
        self.graph.replay()
        return self.out


def compile_unavailable() -> str | None:
    """Why torch.compile cannot build GPU kernels here, or None. Triton compiles its kernel launcher with the C
    compiler against Python's headers at first use: an image without them fails only then, mid-training."""
    try:
        import triton  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return "triton is not installed"
    if not any(shutil.which(c) for c in (os.environ.get("CC", ""), "cc", "gcc", "clang") if c):
        return "no C compiler (install gcc)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "no Python headers (install python3-dev)"
    return None


@functools.cache
def kernels_unavailable() -> str | None:
    """compile_unavailable, asked once a process: for our own Triton kernels (add_norm, decode_attention), which
    ask at every call that might launch one."""
    return compile_unavailable()


def compile_failed(exc: BaseException, instead: str) -> str:
    """The one-line message for a torch.compile failure we recover from by running `instead` (uncompiled)."""
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"torch.compile failed ({type(exc).__name__}: {first}); {instead}"
