"""What the runner's registries (executors, policies) share: "module:attribute" references, imported when first
used, and a group's entry points, read once a process (scanning every installed distribution is not free)."""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from typing import Any


def resolve(ref: str) -> Any:
    """The object "package.module:attribute" names."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@functools.cache
def entry_point_refs(group: str) -> dict[str, str]:
    """name -> "module:attribute" of every entry point in `group`."""
    return {ep.name: ep.value for ep in entry_points(group=group)}
