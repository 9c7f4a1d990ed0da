"""What a step gets from the runner: the context JSON named by $RUNNER_CONTEXT (runner/step_context.py; paths as
this process sees them), and the rewriting of container paths into the host paths behind them."""

from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from runner.spec.models import StepSpec
from runner.step_context import StepContext, StepInputError

__all__ = ["HostPaths", "StepContext", "StepInputError", "host_path", "host_paths_in", "load_context",
           "show_host_paths"]


def load_context(path: str | None = None, options_model: type[StepSpec] = StepSpec) -> StepContext:
    """The context the runner wrote for this step ($RUNNER_CONTEXT), its options as `options_model`."""
    source = path or os.environ.get("RUNNER_CONTEXT")
    if not source:
        msg = "RUNNER_CONTEXT is not set: steps are started by the runner (`runner convert JOB`)"
        raise StepInputError(msg)
    return StepContext.read(Path(source), options_model)


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
