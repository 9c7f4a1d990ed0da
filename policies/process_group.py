"""Joining a torch.distributed process group so that leaving it really frees it.

Some modules give their functions `group=dist.group.WORLD` as a default argument (torch.distributed.nn.functional,
which torch._dynamo and so diffusers import; deepspeed.comm's TorchBackend). Python evaluates defaults when the module
is imported: imported while a group exists, they hold that group for good, and destroy_process_group cannot free it.
Its gloo worker threads then outlive the script; when the interpreter shuts down, a thread still releasing its last
collective's tensors needs the GIL of an interpreter that is going away, and the process aborts with "terminate
called without an active exception" (exit 134) after its work is done. Imported before the group exists, those
defaults are None, which every collective reads as "the default group". So `prepare` imports them first, and `join`
is the one place DP3 joins a group.

The objects training built hold the group too (DDP's reducer; DeepSpeed's parameters, and its gradient hooks that
keep them alive until its engine is destroyed: the RDT engines' `close`): destroy_process_group while they live
(accelerate's end_training, DP3's last step) only takes it out of torch's registry. `leave`, when a step's function
has returned and those objects are gone, drops DeepSpeed's module-level reference, collects what is left and destroys
the group if still registered, so the group is freed, its threads joined, before the interpreter shuts down.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch.distributed as dist

# modules with functions whose default argument is the group that exists when they are imported
HOLDS_WORLD_AT_IMPORT = ("torch.distributed.nn.functional",)
DEEPSPEED_COMM = "deepspeed.comm.torch"


def prepare(extra: Iterable[str] = ()) -> None:
    """Import the modules that would otherwise hold the group created next (those of `extra` that are installed
    too: deepspeed where ZeRO will run). Call before any process group exists."""
    for name in (*HOLDS_WORLD_AT_IMPORT, *extra):
        root = name.split(".", 1)[0]
        if importlib.util.find_spec(root) is not None:
            importlib.import_module(name)


def join(backend: str, init_method: str | None = None, rank: int = -1, world_size: int = -1) -> None:
    """init_process_group after `prepare` (torchrun's environment when init_method is None)."""
    prepare()
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)


def leave() -> None:
    """Free this process's process group, if it has one, once the step that used it has returned."""
    if not dist.is_available():
        return
    deepspeed_groups = sys.modules.get("deepspeed.utils.groups")
    if getattr(deepspeed_groups, "_WORLD_GROUP", None) is not None:
        deepspeed_groups._WORLD_GROUP = None  # type: ignore[union-attr]  # DeepSpeed's own reference to the group
    # A gloo thread may still wait for the GIL to release its last collective's tensors; freeing the group below
    # joins its threads while this thread holds the GIL, so let them have it first.
    time.sleep(0.05)
    gc.collect()  # training objects in reference cycles that still hold the group
    if dist.is_initialized():
        dist.destroy_process_group()
    settle()


def gloo_threads() -> list[str]:
    """Names of this process's running gloo threads (Linux's /proc; [] elsewhere)."""
    names = []
    for task in Path("/proc/self/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended while being listed
            continue
        if "gloo" in name:
            names.append(name)
    return sorted(names)


def settle(limit_s: float = 2.0) -> list[str]:
    """Wait up to `limit_s` for gloo's threads to end after the group was destroyed, collecting reference cycles
    once more if any is left; returns those still running. gloo's transport loop ends with the last reference to
    its device, which a thread finishing its last event can be the one to drop, a moment after destroy returns (a
    CI run saw `gloo_tcp_loop` still listed right after `leave`)."""
    deadline = time.monotonic() + limit_s
    left = gloo_threads()
    if left:
        gc.collect()
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = gloo_threads()
    return left
