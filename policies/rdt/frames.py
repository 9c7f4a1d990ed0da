"""The host side of `act`'s frames: content checks and the copies that are uploaded, without a copy too many.

RdtPolicy caches SigLIP tokens per frame and must never serve stale tokens when a camera refills the same array, so it
keeps a copy of each frame it has encoded and compares the next call's frames with it in full. On an H200 the host's
frame handling took ~1.4 ms of a three-camera call before the GPU had work (docs/rdt.md, sixteenth session): a full
`np.array_equal` of each previous frame (0.21 ms a 640 x 480 frame: it writes a boolean array first), a fresh copy of
each new frame (0.13 ms, page faults included) and a stack of the new frames into the pinned upload buffer (0.39 ms).

Here the copy of a new frame goes once into a pinned buffer taken from a pool (reused, so no page faults); that copy
is both what later calls compare with and what is uploaded, buffer by buffer, without staging. Comparisons read
the bytes as 8-byte words where the layout allows (~3x faster than `np.array_equal` on uint8 frames).
"""

from __future__ import annotations

import numpy as np
import torch


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays hold the same shape, dtype and bytes (element-wise compare when a layout forbids words)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.flags.c_contiguous and b.flags.c_contiguous and a.nbytes % 8 == 0:
        return bool(np.array_equal(a.reshape(-1).view(np.uint64), b.reshape(-1).view(np.uint64)))
    return bool(np.array_equal(a, b))


class FramePool:
    """Host buffers for frame copies, reused by shape: pinned (page-locked) when uploads go to a CUDA device, so that
    a copy uploads asynchronously. `take` waits for the last upload to finish before handing out a buffer that an
    upload might still read."""

    def __init__(self, device: torch.device) -> None:
        self.pinned = device.type == "cuda"
        self.free: dict[tuple[int, ...], list[torch.Tensor]] = {}
        self.tensors: dict[int, torch.Tensor] = {}  # id(array) -> the tensor owning its memory
        self.uploaded: torch.cuda.Event | None = None

    def take(self, like: np.ndarray) -> np.ndarray:
        """A buffer shaped like `like` (uint8) holding a copy of it."""
        shape = tuple(like.shape)
        stack = self.free.get(shape)
        if stack:
            if self.uploaded is not None:
                self.uploaded.synchronize()
            tensor = stack.pop()
        else:
            tensor = torch.empty(shape, dtype=torch.uint8)
            if self.pinned:
                tensor = tensor.pin_memory()
        array = tensor.numpy()
        np.copyto(array, like, casting="unsafe")
        self.tensors[id(array)] = tensor
        return array

    def give(self, array: np.ndarray) -> None:
        """Return a buffer from `take` (anything else is ignored)."""
        tensor = self.tensors.pop(id(array), None)
        if tensor is not None:
            self.free.setdefault(tuple(tensor.shape), []).append(tensor)

    def upload(self, arrays: list[np.ndarray], device: torch.device) -> torch.Tensor | None:
        """The arrays as one (N, ...) uint8 tensor on `device`, copied buffer by buffer without blocking the host,
        when all of them are this pool's pinned buffers of one shape; else None (the caller stages them)."""
        tensors = [self.tensors.get(id(a)) for a in arrays]
        if not (self.pinned and device.type == "cuda" and all(t is not None for t in tensors)
                and len({a.shape for a in arrays}) == 1):
            return None
        out = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8, device=device)
        for i, tensor in enumerate(tensors):
            out[i].copy_(tensor, non_blocking=True)  # type: ignore[arg-type]
        self.uploaded = torch.cuda.Event()  # type: ignore[no-untyped-call]
        self.uploaded.record()
        return out
