"""Value types used by job specs: byte sizes, GPU selections, job names. Parsers raise ValueError with user-facing text."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """'8g', '512m', '1.5GiB', 1048576 -> bytes (binary units, as docker reads them)."""
    if isinstance(value, bool):
        msg = f"expected a size such as 8g or 512m, got {value!r}"
        raise ValueError(msg)
    if isinstance(value, int):
        if value <= 0:
            msg = f"a size must be positive, got {value}"
            raise ValueError(msg)
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            n = float(m.group(1)) * _UNITS[m.group(2).lower()]
            if n >= 1:
                return int(n)
    msg = f"cannot parse {value!r} as a size; write a number with a unit, such as 8g, 512m or 64k"
    raise ValueError(msg)


def format_size(n_bytes: int) -> str:
    """Bytes -> the shortest exact docker-style size ('8g', '1536m', '100')."""
    for unit in ("t", "g", "m", "k"):
        step = _UNITS[unit]
        if n_bytes % step == 0:
            return f"{n_bytes // step}{unit}"
    return str(n_bytes)


ByteSize = Annotated[int, BeforeValidator(parse_size), PlainSerializer(format_size, return_type=str)]


def parse_gpus(value: Any) -> Literal["all"] | int | list[int]:
    """'all', a count (0 = none) or a list of integer device ids."""
    if value is None:
        return 0
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return "all"
        if value.strip().isdigit():
            return int(value.strip())
        msg = f"expected 'all', a GPU count or a list of GPU ids, got {value!r}"
        raise ValueError(msg)
    if isinstance(value, bool):
        msg = f"expected 'all', a GPU count or a list of GPU ids, got {value!r}"
        raise ValueError(msg)
    if isinstance(value, int):
        if value < 0:
            msg = f"a GPU count cannot be negative, got {value}"
            raise ValueError(msg)
        return value
    if isinstance(value, list):
        bad = [f"[{i}] {v!r}" for i, v in enumerate(value)
               if isinstance(v, bool) or not isinstance(v, int) or v < 0]
        if bad:
            msg = "GPU ids must be non-negative integers; not: " + ", ".join(bad)
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
