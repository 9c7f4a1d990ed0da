"""PURE: classify a failed step from its exit status, OOM flag and log tail, with the one-line fix."""

from __future__ import annotations

import re
from dataclasses import dataclass

from runner.spec.types import format_size

GIB = 1024**3


@dataclass(frozen=True)
class Diagnosis:
    kind: str
    cause: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "cause": self.cause, "fix": self.fix}


@dataclass(frozen=True)
class FailureFacts:
    step: str
    exit_code: int
    oom_killed: bool
    log_tail: str
    job: str = "JOB"
    interrupted: bool = False  # the runner stopped it (Ctrl-C, `runner stop`): whatever the exit code says
    shm_size: int | None = None
    shm_needed: int = 0
    num_workers: int = 0
    nccl_ifname: str | None = None
    interfaces: tuple[str, ...] = ()
    gpu_memory_fix: str | None = None  # in the step's own options (StepSpec.gpu_memory_fix); None: generic


_SHM = re.compile(r"Bus error|out of shared memory|insufficient shared memory|shm_open|/dev/shm", re.I)
_NCCL_IF = re.compile(r"no socket interface found|NCCL_SOCKET_IFNAME.*(not found|no such)", re.I)
_NCCL_NET = re.compile(r"NCCL (WARN|error).*(Connection refused|connect|timed? ?out|unhandled system error)|"
                       r"DistNetworkError|Socket Timeout", re.I)
_CUDA_OOM = re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory", re.I)
_SHAPE = re.compile(r"(mat1 and mat2 shapes cannot be multiplied[^\n]*|size mismatch[^\n]*|"
                    r"shape '\[[^\n]*\]' is invalid[^\n]*|must match the size of tensor[^\n]*)")
_SAVED = re.compile(r"(?:checkpoint|saved)\s+(\S*(?:step-\d+\.ckpt|checkpoint-\d+))")
_DEPLOY_STOP = re.compile(r"^deploy: stopped: ((?:robot|policy|observation|safety):[^\n]*)", re.M)
_MISSING = re.compile(r"(?:FileNotFoundError|No such file or directory)[^\n]*?['\"]([^'\"\n]+)['\"]")


def classify(f: FailureFacts) -> Diagnosis | None:
    """The most specific known cause of a failure, or None when nothing matches."""
    tail = f.log_tail
    if f.interrupted or (f.exit_code in (130, 143) and not f.oom_killed):
        saved = _SAVED.findall(tail)
        where = f"; last checkpoint written: {saved[-1]}" if saved else "; no checkpoint was written"
        how = f"`runner resume {f.job}`" if f.step == "train" else f"`runner {f.step} {f.job}`"
        return Diagnosis("interrupted", f"the step was stopped (Ctrl-C or `runner stop`){where if f.step == 'train' else ''}",
                         f"continue with {how}")
    m = _DEPLOY_STOP.search(tail)
    if m:
        return Diagnosis("deploy_safety_stop", f"the control loop stopped and held the arm: {m.group(1).strip()}",
                         "check the robot server's joint readings and the policy's checkpoint before deploying again "
                         "(nothing computed from the bad value was sent)")
    if _SHM.search(tail):
        need = max(f.shm_needed * 5 // 4, 2 * (f.shm_size or 64 * 1024**2))
        need = -(-need // GIB) * GIB
        have = format_size(f.shm_size) if f.shm_size else "64m (docker's default)"
        return Diagnosis("shm", f"DataLoader workers ran out of shared memory (/dev/shm {have}, "
                         f"{f.num_workers} workers)",
                         f"set steps.{f.step}.shm: {format_size(need)} in the job, or num_workers: 0")
    if _NCCL_IF.search(tail):
        where = f" (there: {', '.join(f.interfaces)})" if f.interfaces else ""
        return Diagnosis("nccl_interface", f"NCCL found no socket interface named {f.nccl_ifname!r}",
                         f"remove resources.nccl_socket_ifname so the runner picks one, or name one that exists{where}")
    if _CUDA_OOM.search(tail):
        return Diagnosis("cuda_oom", "the GPU ran out of memory",
                         f.gpu_memory_fix or f"lower the batch size of steps.{f.step}, or give it more GPUs")
    if f.oom_killed or f.exit_code == 137:
        return Diagnosis("host_oom", "the kernel killed the step for using too much host memory (exit 137)",
                         "raise resources.memory, or lower num_workers / batch size")
    m = _SHAPE.search(tail)
    if m:
        return Diagnosis("shape_mismatch", f"tensor shapes disagree: {m.group(1).strip()}",
                         "a dimension in the job does not match the data; remove pinned state/action dims "
                         "so they are read from the data, or re-convert the data")
    if _NCCL_NET.search(tail):
        return Diagnosis("nccl_connect", "NCCL ranks could not connect to each other",
                         "check resources.nccl_socket_ifname reaches the other ranks; "
                         "on one machine leave it unset (loopback)")
    m = _MISSING.search(tail)
    if m and "/" not in m.group(1) and "." not in m.group(1):
        # a bare name (no folder, no suffix): a program a launcher tried to start, not a data file
        return Diagnosis("command_not_found", f"a program the step starts is missing: {m.group(1)}",
                         "install it in the image (image.pip / image.apt) or put it on PATH where the step runs")
    if m:
        return Diagnosis("missing_file", f"a file the step needs is missing: {m.group(1)}",
                         "check the data/weights paths in the job and that the step before this one ran")
    if f.exit_code == 127:
        return Diagnosis("command_not_found", "the step's command was not found in the image",
                         "check steps.<step>.command, or add the package with image.pip / image.apt")
    if f.exit_code == 126:
        return Diagnosis("not_executable", "the step's command is not executable",
                         "check the command's path and permissions")
    return None


def tail_text(data: bytes, lines: int = 80) -> str:
    """The last `lines` lines of a log, decoded leniently."""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
