"""What a step gets from the runner: the context JSON named by $RUNNER_CONTEXT (paths as this process sees them)."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


class StepInputError(ValueError):
    """What a step was given cannot work (a path the job lacks, an option missing): the step stops with exit 2 and
    this message, no traceback (policies.entry)."""


@dataclass(frozen=True)
class StepContext:
    job: str
    policy: str
    task: str | None
    step: str
    run_id: str
    run_dir: Path
    resume: bool
    mode: str  # "run", or "check" for `runner convert --check`
    paths: dict[str, Any]
    options: dict[str, Any]
    spec: dict[str, Any]
    resume_from: str | None = None  # `--from`: a lineage name or a checkpoint path (policies/lineage.py)
    host_paths: dict[str, str] | None = None  # container path -> host path (docker); None where they are the same

    def path(self, key: str) -> Path:
        value = self.paths.get(key)
        if not value:
            msg = f"the job has no {key} path; set data.{key} in {self.job}'s job file"
            raise StepInputError(msg)
        return Path(value)


def _requeued(data: dict[str, Any]) -> bool:
    """A training step that Slurm restarted (requeue after preemption or time limit) resumes by itself."""
    return data.get("step") == "train" and os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")


def load_context(path: str | None = None) -> StepContext:
    source = path or os.environ.get("RUNNER_CONTEXT")
    if not source:
        msg = "RUNNER_CONTEXT is not set: steps are started by the runner (`runner convert JOB`)"
        raise StepInputError(msg)
    data = json.loads(Path(source).read_text())
    return StepContext(job=data["job"], policy=data["policy"], task=data.get("task"), step=data["step"],
                       run_id=data["run_id"], run_dir=Path(data["run_dir"]), resume=bool(data.get("resume")) or _requeued(data),
                       mode=data.get("mode", "run"), paths=data["paths"], options=data["options"], spec=data["spec"],
                       resume_from=data.get("resume_from"), host_paths=data.get("host_paths"))


class HostPaths:
    """Rewrites container paths (`/job/...`, `/data/converted/...`) to the host paths behind them, in the step's
    messages and in what it stores: the user reads and clicks the paths of their own machine."""

    def __init__(self, mapping: dict[str, str] | None) -> None:
        pairs = sorted((mapping or {}).items(), key=lambda kv: -len(kv[0]))
        self.pairs = [(c.rstrip("/"), h.rstrip("/")) for c, h in pairs if c not in ("/", "") and c != h]
        alternatives = "|".join(re.escape(c) for c, _ in self.pairs)
        self.pattern = re.compile(rf"(?<![\w./-])({alternatives})(?=/|\b|$)") if self.pairs else None
        self.table = dict(self.pairs)

    def __call__(self, text: str) -> str:
        if self.pattern is None or "/" not in text:
            return text
        return self.pattern.sub(lambda m: self.table[m.group(1)], text)


class _Rewriting(io.TextIOBase):
    """A text stream that passes every write through a HostPaths before the real stream."""

    def __init__(self, stream: TextIO, rewrite: HostPaths) -> None:
        self.stream, self.rewrite = stream, rewrite

    def write(self, s: str) -> int:
        self.stream.write(self.rewrite(s))
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()


_SHOWN = HostPaths(None)


def show_host_paths(ctx: StepContext) -> None:
    """From here on, this process's stdout/stderr and `host_path` speak in host paths."""
    global _SHOWN
    _SHOWN = HostPaths(ctx.host_paths)
    if _SHOWN.pattern is not None:
        sys.stdout = _Rewriting(sys.stdout, _SHOWN)
        sys.stderr = _Rewriting(sys.stderr, _SHOWN)


def host_path(path: str | Path) -> str:
    """`path` as the user's machine names it (the identity outside a container)."""
    return _SHOWN(str(path))


def host_paths_in(data: Any) -> Any:
    """`data` (JSON-like) with every string's container paths as host paths: for files the user opens."""
    if isinstance(data, str):
        return _SHOWN(data)
    if isinstance(data, dict):
        return {k: host_paths_in(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [host_paths_in(v) for v in data]
    return data
