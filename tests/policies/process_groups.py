"""For tests that spawn processes joining a group: leave it as a step's process does, and check it was freed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from policies import process_group


def then_leave(rank: int, worker: Callable[..., None], *args: Any) -> None:
    """mp.spawn(then_leave, args=(worker, ...)): run worker(rank, ...), then leave its group as policies.entry does
    when a step returns, and fail if the group outlived that: its gloo threads would still be running when the
    interpreter shuts down, and the process can abort at exit (policies/process_group.py says why)."""
    worker(rank, *args)
    process_group.leave()
    left = process_group.gloo_threads()  # leave settled them
    if left:
        msg = f"the process group outlived leaving it (threads {left}): join it with policies.process_group"
        raise AssertionError(msg)
