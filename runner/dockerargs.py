"""DockerRunArgs: the one source of truth for a step's container. Pure renderers to CLI argv and SDK kwargs."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.spec.types import format_size


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str
    secret: bool = False  # rendered by name only; the value reaches the SDK call and nothing else


@dataclass(frozen=True)
class BindMount:
    source: str
    target: str
    read_only: bool


@dataclass(frozen=True)
class GpuRequest:
    """all GPUs, a count, or device ids (exactly one of them)."""

    all: bool = False
    count: int = 0
    device_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ulimit:
    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class DockerRunArgs:
    image: str
    command: tuple[str, ...]
    name: str
    user: str
    workdir: str
    labels: tuple[tuple[str, str], ...] = ()
    env: tuple[EnvVar, ...] = ()
    pass_env: tuple[str, ...] = ()  # names whose values come from the runner's environment at run time
    mounts: tuple[BindMount, ...] = ()
    gpus: GpuRequest | None = None
    shm_size: int | None = None
    ipc_mode: str | None = None
    network: str = "bridge"
    ulimits: tuple[Ulimit, ...] = ()
    devices: tuple[str, ...] = ()
    privileged: bool = False
    cpus: float | None = None
    memory: int | None = None
    init: bool = False
    interactive: bool = False  # -i (stdin kept open) and --rm, for `runner shell` only
    tty: bool = False  # -t, for `runner shell` when its own stdin is a terminal


def _gpus_cli(g: GpuRequest) -> str:
    if g.all:
        return "all"
    if g.device_ids:
        # The docker CLI parses --gpus as CSV: a device list needs its own double quotes.
        return '"device=' + ",".join(g.device_ids) + '"'
    return str(g.count)


def render_cli(a: DockerRunArgs) -> list[str]:
    """The `docker run` argv equivalent to to_sdk_kwargs(a); secrets appear by name only."""
    argv = ["docker", "run"]
    if a.interactive:
        argv += ["--interactive", *(["--tty"] if a.tty else []), "--rm"]
    argv += ["--name", a.name, "--user", a.user, "--workdir", a.workdir]
    for k, v in a.labels:
        argv += ["--label", f"{k}={v}"]
    if a.init:
        argv.append("--init")
    if a.privileged:
        argv.append("--privileged")
    argv += ["--network", a.network]
    if a.ipc_mode:
        argv += ["--ipc", a.ipc_mode]
    if a.shm_size is not None:
        argv += ["--shm-size", format_size(a.shm_size)]
    if a.gpus is not None:
        argv += ["--gpus", _gpus_cli(a.gpus)]
    if a.cpus is not None:
        argv += ["--cpus", f"{a.cpus:g}"]
    if a.memory is not None:
        argv += ["--memory", format_size(a.memory)]
    for u in a.ulimits:
        argv += ["--ulimit", f"{u.name}={u.soft}:{u.hard}" if u.soft != u.hard else f"{u.name}={u.soft}"]
    for d in a.devices:
        argv += ["--device", d]
    for m in a.mounts:
        spec = f"type=bind,source={m.source},target={m.target}" + (",readonly" if m.read_only else "")
        argv += ["--mount", spec]
    for e in a.env:
        argv += ["--env", e.name if e.secret else f"{e.name}={e.value}"]
    for n in a.pass_env:
        argv += ["--env", n]
    argv.append(a.image)
    argv += list(a.command)
    return argv


def to_sdk_kwargs(a: DockerRunArgs, environ: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments for docker-py's `containers.create`, equal to render_cli(a)."""
    env = [f"{e.name}={e.value}" for e in a.env]
    env += [f"{n}={environ[n]}" for n in a.pass_env if n in environ]
    kw: dict[str, Any] = {
        "image": a.image,
        "command": list(a.command),
        "name": a.name,
        "user": a.user,
        "working_dir": a.workdir,
        "labels": dict(a.labels),
        "environment": env,
        "network_mode": a.network,
        "privileged": a.privileged,
        "init": a.init,
        "mounts": [{"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
                   for m in a.mounts],
        "ulimits": [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in a.ulimits],
        "devices": [f"{d}:{d}:rwm" for d in a.devices],
        "stdin_open": a.interactive,
        "tty": a.interactive and a.tty,
        "auto_remove": a.interactive,
    }
    if a.ipc_mode:
        kw["ipc_mode"] = a.ipc_mode
    if a.shm_size is not None:
        kw["shm_size"] = a.shm_size
    if a.gpus is not None:
        g = a.gpus
        kw["device_requests"] = [{
            "count": -1 if g.all else (0 if g.device_ids else g.count),
            "device_ids": list(g.device_ids) or None,
            "capabilities": [["gpu"]],
        }]
    if a.cpus is not None:
        kw["nano_cpus"] = int(a.cpus * 1e9)
    if a.memory is not None:
        kw["mem_limit"] = a.memory
    return kw


def render_shell(argv: list[str]) -> str:
    """Shell-quoted, one option a line, ready to paste."""
    lines: list[str] = []
    i = 2
    head = " ".join(shlex.quote(x) for x in argv[:2])
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--") and tok not in _FLAGS:
            lines.append(f"{tok} {shlex.quote(argv[i + 1])}")
            i += 2
        elif tok.startswith("--"):
            lines.append(tok)
            i += 1
        else:
            lines.append(" ".join(shlex.quote(x) for x in argv[i:]))
            break
    return " \\\n    ".join([head, *lines])


_FLAGS = {"--interactive", "--tty", "--rm", "--init", "--privileged"}
