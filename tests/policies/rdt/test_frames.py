"""The host side of act's frames: byte comparisons, the pool of copies, and the policy never serving stale tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from policies.rdt.frames import FramePool, same_bytes
from tests.policies.rdt.test_model import tiny_policies


def test_same_bytes_sees_one_changed_byte_in_any_layout() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    copy = frame.copy()
    assert same_bytes(frame, copy)
    copy[47, 63, 2] ^= 1  # the last byte
    assert not same_bytes(frame, copy)
    flipped = frame[:, ::-1]  # not contiguous: compared element by element
    assert same_bytes(flipped, np.ascontiguousarray(flipped))
    assert not same_bytes(flipped, frame)
    odd = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)  # 105 bytes: no 8-byte words
    assert same_bytes(odd, odd.copy())
    assert not same_bytes(frame, frame.reshape(64, 48, 3))  # same bytes, another shape
    assert not same_bytes(frame, frame.astype(np.int16))


def test_pool_reuses_a_returned_buffer_and_copies_into_it() -> None:
    pool = FramePool(torch.device("cpu"))
    a = np.full((4, 6, 3), 7, np.uint8)
    first = pool.take(a)
    assert np.array_equal(first, a) and first is not a
    a[0, 0, 0] = 9
    assert first[0, 0, 0] == 7  # a copy, not a view
    pool.give(first)
    second = pool.take(a)
    assert second.ctypes.data == first.ctypes.data  # the same memory, reused
    assert np.array_equal(second, a)
    pool.give(np.zeros(3, np.uint8))  # not the pool's: ignored
    assert pool.upload([second], torch.device("cpu")) is None  # the caller stages CPU uploads


def test_a_camera_refilling_one_array_gets_new_tokens_and_the_copies_are_recycled(tmp_path: Path) -> None:
    (policy,), lang = tiny_policies(tmp_path, 1)
    encoded: list[int] = []
    encode = policy.tower.encode

    def counting(px: torch.Tensor) -> torch.Tensor:
        encoded.append(len(px))
        out: torch.Tensor = encode(px)
        return out

    policy.tower.encode = counting
    emb = torch.randn(4, lang)
    buffer = np.zeros((48, 64, 3), np.uint8)  # one array the camera writes every frame into
    rng = np.random.default_rng(1)
    for _ in range(12):
        buffer[:] = rng.integers(0, 255, buffer.shape, dtype=np.uint8)
        policy.act({"qpos": np.zeros(8), "images": {"cam_high": buffer}}, emb)
    assert encoded == [2] + [1] * 11  # background + frame, then every refilled frame anew
    assert len(policy.pool.tensors) == len(policy.seen) == 1  # one live copy
    assert sum(len(v) for v in policy.pool.free.values()) <= 1  # the old one, reused
    policy.act({"qpos": np.zeros(8), "images": {"cam_high": buffer}}, emb)
    assert len(encoded) == 12  # unchanged content: no encode
    newest = policy.token_cache[policy.seen[id(buffer)][2]]
    assert torch.allclose(newest, policy.tower([buffer]), atol=1e-5)  # not stale
    policy.reset()
    assert not policy.pool.tensors


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_pinned_copies_upload_as_the_staged_stack_does() -> None:
    pool = FramePool(torch.device("cuda"))
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(3)]
    copies = [pool.take(f) for f in frames]
    out = pool.upload(copies, torch.device("cuda"))
    assert out is not None and out.is_cuda
    assert torch.equal(out.cpu(), torch.from_numpy(np.stack(frames)))
    assert pool.upload([*copies, frames[0]], torch.device("cuda")) is None  # one array not the pool's: staged
