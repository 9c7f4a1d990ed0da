"""The robot's data formats, shared by the recorder, the control loop and the converters: camera frames as JPEG,
HDF5 attributes as JSON where they are containers, and the gripper's binarisation (GELLO: 1.0 is open)."""

from __future__ import annotations

import io
import json
from typing import Any

import h5py
import numpy as np
from PIL import Image


def encode_jpeg(rgb: np.ndarray, quality: int = 90, size: tuple[int, int] | None = None) -> bytes:
    img = Image.fromarray(rgb)
    if size is not None and img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def write_attrs(f: h5py.File, attrs: dict[str, Any]) -> None:
    """HDF5 attributes as read_attrs reads them back: containers and None as JSON, scalars and strings as they are."""
    for k, v in attrs.items():
        f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) or v is None else v


def binarize(gripper: np.ndarray, threshold: float) -> np.ndarray:
    """1.0 (open) where >= threshold, else 0.0: the trained policy commits instead of hovering at ~0.7."""
    return (np.asarray(gripper) >= threshold).astype(np.float64)
