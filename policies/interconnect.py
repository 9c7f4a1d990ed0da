"""How fast the processes of a several-GPU run average their gradients: a timed all-reduce when training starts.

Scaling past one GPU rests on it. GPUs joined by NVLink all-reduce at hundreds of GB/s; GPUs on PCIe, or that reach
each other only through host memory (no peer access: a virtual machine's passthrough, `NCCL_P2P_DISABLE`, a PCIe
topology NCCL will not use), manage tens, and then every step waits for its gradients (on two H200s lent as one machine, NCCL's
all-reduce kernels ran at ~36 GB/s: docs/rdt.md, twelfth session). The train log gives the figure, so that a lab
sees why two GPUs give 1.8x and not 2x, and what to check.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

#: below this bus bandwidth (GB/s), processes on one machine are warned that their gradients cross host memory
SLOW_GBPS = 100.0


@dataclass(frozen=True)
class Link:
    """One measurement: `processes` all-reducing `nbytes` through `backend` in `seconds` (the slowest process's
    median)."""

    processes: int
    backend: str
    nbytes: int
    seconds: float
    one_machine: bool
    peer_access: bool | None = None  # CUDA: every pair of visible GPUs can read each other's memory

    @property
    def bus_gbps(self) -> float:
        """NCCL's bus bandwidth: in a ring all-reduce each process sends and receives 2(n-1)/n of the buffer."""
        return 2 * (self.processes - 1) / self.processes * self.nbytes / self.seconds / 1e9

    def describe(self) -> str:
        peers = "" if self.peer_access is None else f", GPU peer access {'yes' if self.peer_access else 'no'}"
        return (f"train: all-reduce across {self.processes} processes ({self.backend}{peers}): "
                f"{self.nbytes / 2**20:.0f} MB in {self.seconds * 1e3:.2f} ms, {self.bus_gbps:.0f} GB/s bus bandwidth")

    def warning(self) -> str | None:
        """For GPUs of one machine that average slowly; None where the speed is as expected (or not a GPU's)."""
        if "nccl" not in self.backend or not self.one_machine or self.bus_gbps >= SLOW_GBPS:
            return None
        return (f"warning: the {self.processes} GPUs average gradients at {self.bus_gbps:.0f} GB/s, the speed of PCIe "
                f"or host memory, not of GPUs joined by NVLink (hundreds of GB/s): each step waits for its gradients, "
                f"so expect well under {self.processes}x one GPU's samples/s. If the GPUs have NVLink, check "
                "`nvidia-smi topo -m` (NV# between them) and that NCCL_P2P_DISABLE / NCCL_P2P_LEVEL are not set in "
                "the job's env")


def measure(device: torch.device, megabytes: int | None = None, repeats: int = 3) -> Link | None:
    """Time all-reduces of a `megabytes` buffer (64 on GPUs, 8 elsewhere) on every process of the default group;
    None with no group or a group of one. A collective: every process calls it at the same point."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    mb = megabytes or (64 if device.type == "cuda" else 8)
    buf = torch.ones(mb * 2**20 // 4, device=device)
    dist.all_reduce(buf)  # NCCL connects the processes at the first collective: not timed

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for _ in range(repeats):
        sync()
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(buf)
        sync()
        times.append(time.perf_counter() - t)
    slowest = torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    world = dist.get_world_size()
    return Link(world, str(dist.get_backend()), buf.numel() * 4, float(slowest.item()),
                int(os.environ.get("LOCAL_WORLD_SIZE", world)) == world, _peer_access(device))


def _peer_access(device: torch.device) -> bool | None:
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return None
    n = torch.cuda.device_count()
    return all(torch.cuda.can_device_access_peer(a, b) for a in range(n) for b in range(n) if a != b)


def report(device: torch.device, say: Callable[[str], None]) -> Link | None:
    """measure(), then its line (and warning) through `say` (the main process's log; a no-op on the others)."""
    link = measure(device)
    if link is not None:
        say(link.describe())
        if (w := link.warning()) is not None:
            say(w)
    return link
