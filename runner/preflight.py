"""Checks before anything is built or started. `check_*` are pure over gathered facts; `gather_*` read the machine."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from policies.checkpoint_store import human_bytes
from runner.layout import is_secret as _is_secret
from runner.plan import mounts_raw, third_party_for
from runner.spec.load import LoadedJob
from runner.spec.types import format_size

GIB = 1024**3
#: Free space a run needs on the runs folder beyond what the image takes: logs, checkpoints of small jobs.
MIN_RUNS_FREE = 2 * GIB
#: Free space the engine needs for a build it has not cached yet (a torch image is ~2-3 GB unpacked).
MIN_BUILD_FREE = 6 * GIB


@dataclass(frozen=True)
class PathIssue:
    key: str
    path: Path
    problem: str  # "missing" | "unreadable"

    def __str__(self) -> str:
        if self.problem == "missing":
            return f"{self.key}: {self.path} does not exist"
        return f"{self.key}: {self.path} cannot be read by uid {os.getuid()} (the container runs as you)"


def input_paths(job: LoadedJob, step: str | None) -> list[tuple[str, Path, bool]]:
    """(key, host path, must exist for this step) for every path the job mounts."""
    spec = job.spec
    out: list[tuple[str, Path, bool]] = []
    if spec.data.raw is not None and mounts_raw(job, step):
        out.append(("data.raw", spec.data.raw, step is not None))  # mounted read-only: it must exist
    if spec.data.converted is not None:
        out.append(("data.converted", spec.data.converted, step not in (None, "convert")))
    out += [(f"weights.{k}", v, True) for k, v in spec.weights.items()]
    used = third_party_for(job, step)
    out += [(f"third_party.{k}", v, step is not None) for k, v in spec.third_party.items() if k in used]
    out += [(f"mounts[{i}].source", m.source, True) for i, m in enumerate(spec.mounts)]
    return out


def check_paths(job: LoadedJob, step: str | None) -> list[PathIssue]:
    """Missing or unreadable inputs (a warning for validate/plan, an error for run)."""
    issues = []
    for key, path, required in input_paths(job, step):
        if not path.exists():
            if required or step is None:
                issues.append(PathIssue(key, path, "missing"))
        elif not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            issues.append(PathIssue(key, path, "unreadable"))
    return issues


@dataclass(frozen=True)
class EngineFacts:
    runtimes: tuple[str, ...]
    cdi_gpus: bool
    docker_root_free: int | None
    image_cached: bool


def check_engine(job: LoadedJob, facts: EngineFacts) -> list[str]:
    reasons = []
    if job.spec.resources.gpus and "nvidia" not in facts.runtimes and not facts.cdi_gpus:
        reasons.append(
            f"resources.gpus is {job.spec.resources.gpus!r} but the Docker engine has no NVIDIA runtime "
            f"(runtimes: {', '.join(facts.runtimes) or 'none'}). Install nvidia-container-toolkit and run "
            "`nvidia-ctk runtime configure --runtime=docker`, or set resources.gpus: 0")
    if not facts.image_cached and facts.docker_root_free is not None and facts.docker_root_free < MIN_BUILD_FREE:
        reasons.append(f"the Docker engine has {format_size(facts.docker_root_free)} free; building the image "
                       f"needs about {format_size(MIN_BUILD_FREE)}. Free space (`docker system prune`)")
    return reasons


def check_disk(runs_dir: Path, free: int) -> list[str]:
    if free < MIN_RUNS_FREE:
        return [f"{runs_dir} has {format_size(free)} free; a run needs at least {format_size(MIN_RUNS_FREE)}"]
    return []


def checkpoint_disk_warnings(job: LoadedJob, steps: Iterable[str], free: int) -> list[str]:
    """Steps whose checkpoints, as many as a run keeps at once, will not fit in `free` bytes of the runs folder: a
    warning, not a refusal (the run is good until the disk fills; `runner gc` may free space meanwhile)."""
    out = []
    for s in steps:
        opts = job.step(s)
        need = opts.checkpoints_disk() if opts is not None else None
        if need is None or need[0] * need[1] <= free:
            continue
        each, kept = need
        out.append(f"warning: steps.{s} keeps up to {kept} checkpoints of ~{human_bytes(each)} "
                   f"({human_bytes(each * kept)}) but {job.spec.outputs.runs_dir} has {human_bytes(free)} free: lower "
                   f"steps.{s}.checkpoints_total_limit, raise checkpointing_period, or free space (`runner gc`)")
    return out


def check_memory(job: LoadedJob, steps: Iterable[str], host_memory: int | None) -> list[str]:
    """Sizes larger than this machine's memory: /dev/shm and the memory limit live in RAM."""
    if host_memory is None:
        return []
    sizes = [("resources.shm", job.spec.resources.shm), ("resources.memory", job.spec.resources.memory)]
    sizes += [(f"steps.{s}.shm", getattr(job.step(s), "shm", None)) for s in steps]
    return [f"{key} is {format_size(size)} but this machine has {format_size(host_memory)} of memory; /dev/shm and "
            f"memory limits are RAM: ask for less" for key, size in sizes if size is not None and size > host_memory]


def gather_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def summarize(issues: Iterable[object]) -> list[str]:
    return [str(i) for i in issues]


def literal_secret_values(job: LoadedJob) -> list[tuple[str, str, str]]:
    """(where, key, value) of secret-named env values written in the job file itself rather than referenced."""
    envs = [("env", job.spec.env), *((f"steps.{s}.env", getattr(job.step(s), "env", {})) for s in job.step_names())]
    return [(f"{where}.{key}", key, str(value)) for where, env in envs for key, value in env.items()
            if _is_secret(key, job.spec.secret_env) and str(value) and str(value) in job.text]


def literal_secrets(job: LoadedJob) -> list[str]:
    """Warnings for secrets written into the job file."""
    return [f"{where} holds a literal secret; write `{key}: ${{oc.env:{key}}}` to keep it out of files "
            "(records show it as <redacted>)" for where, key, _ in literal_secret_values(job)]
