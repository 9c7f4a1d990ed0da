"""Value types used by job specs: byte sizes, GPU selections, job names. Parsers raise ValueError with user-facing text."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


#: The largest size a job may name (docker and the kernel take 64-bit byte counts; no host has more memory).
MAX_SIZE = 1024**5


def parse_size(value: Any) -> int:
    """'8g', '512m', '1.5GiB', '4096b' -> bytes (binary units, as docker reads them).

    A bare number is refused: docker reads `--shm-size 512` as 512 bytes, which brings back the DataLoader's
    `Bus error` the shm option exists to prevent; `512b` says bytes on purpose.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        msg = (f"a size needs a unit, got the bare number {value!r}: write {value}m or {value}g (docker would read "
               f"{value} as bytes; write {value}b if you mean bytes)")
        raise ValueError(msg)
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m and (m.group(2) or re.search(r"b\s*$", value, re.IGNORECASE)):
            n = float(m.group(1)) * _UNITS[m.group(2).lower()]
            if n > MAX_SIZE:
                msg = f"the size {value!r} is larger than any machine ({format_size(MAX_SIZE)} at most)"
                raise ValueError(msg)
            if n >= 1:
                return int(n)
        elif m:
            msg = (f"a size needs a unit, got {value!r}: write {m.group(1)}m or {m.group(1)}g (docker would read "
                   f"{m.group(1)} as bytes; write {m.group(1)}b if you mean bytes)")
            raise ValueError(msg)
    msg = f"cannot parse {value!r} as a size; write a number with a unit, such as 8g, 512m or 64k"
    raise ValueError(msg)


def format_size(n_bytes: int) -> str:
    """Bytes -> the shortest exact docker-style size ('8g', '1536m', '100b')."""
    for unit in ("t", "g", "m", "k"):
        step = _UNITS[unit]
        if n_bytes % step == 0:
            return f"{n_bytes // step}{unit}"
    return f"{n_bytes}b"


def approx_size(n_bytes: int) -> str:
    """Bytes -> a size to read, not to parse: '512 B', '13.8 KiB', '284 MiB', '2.00 GiB'."""
    if n_bytes < 1024:
        return f"{n_bytes} B"
    size = float(n_bytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):  # noqa: B007 - the unit the loop stops at is the one shown
        size /= 1024
        if size < 1024:
            break
    return f"{size:.2f} {unit}" if size < 10 else f"{size:.1f} {unit}" if size < 100 else f"{size:.0f} {unit}"


ByteSize = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size, return_type=str)]


#: More GPUs than any one machine has (the largest nodes have 16): a count or id past this is a typo.
MAX_GPUS = 64


def parse_gpus(value: Any) -> Literal["all"] | int | list[int]:
    """'all', a count (0 = none) or a list of integer device ids, each below MAX_GPUS."""
    if value is None:
        return 0
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return "all"
        if value.strip().isdigit():
            return parse_gpus(int(value.strip()))
        msg = f"expected 'all', a GPU count or a list of GPU ids, got {value!r}"
        raise ValueError(msg)
    if isinstance(value, bool):
        msg = f"expected 'all', a GPU count or a list of GPU ids, got {value!r}"
        raise ValueError(msg)
    if isinstance(value, int):
        if value < 0:
            msg = f"a GPU count cannot be negative, got {value}"
            raise ValueError(msg)
        if value > MAX_GPUS:
            msg = f"a GPU count of {value} is more than any machine has ({MAX_GPUS} at most); GPUs are per machine"
            raise ValueError(msg)
        return value
    if isinstance(value, list):
        bad = [f"[{i}] {v!r}" for i, v in enumerate(value)
               if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < MAX_GPUS]
        if bad:
            msg = f"GPU ids are integers from 0 to {MAX_GPUS - 1}; not: " + ", ".join(bad)
            raise ValueError(msg)
        if len(set(value)) != len(value):
            msg = f"GPU ids are repeated in {value}"
            raise ValueError(msg)
        if not value:
            msg = "an empty GPU list; write 0 for no GPUs"
            raise ValueError(msg)
        return list(value)
    msg = f"expected 'all', a GPU count or a list of GPU ids, got {value!r}"
    raise ValueError(msg)


Gpus = Annotated[Literal["all"] | int | list[int], BeforeValidator(parse_gpus)]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
JobName = Annotated[str, BeforeValidator(lambda v: _check_name(v))]


def _check_name(value: Any) -> str:
    if not isinstance(value, str) or not re.match(NAME_PATTERN, value):
        msg = (f"a job name is lowercase letters, digits, '_', '.', '-' (up to 63, starting with a letter "
               f"or digit), got {value!r}")
        raise ValueError(msg)
    return value
