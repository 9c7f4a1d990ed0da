"""Triton where torch's CUDA builds ship it: `triton` and `triton.language` as `tl`, or both None on CPU-only
installs. The modules with kernels of our own (policies/rdt/add_norm.py, decode_attention.py, kv_place.py) define
them only when it is there, and launch them only where `cuda_graph.kernels_unavailable()` says they can build."""

from __future__ import annotations

from typing import Any

try:
    import triton as _triton  # type: ignore[import-not-found,unused-ignore]
    import triton.language as _tl  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the installed torch
    _triton = _tl = None

triton: Any = _triton
tl: Any = _tl
