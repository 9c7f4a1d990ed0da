"""Executors by name: a registry. The built-ins are registered by import path, so the Docker SDK loads only when
docker is used. A lab adds its own executor from its own package, touching nothing here or in the orchestrator:
`runner.executors.register("mine", MyExecutor)`, or an entry point in the group `robo_runner.executors`
(`mine = "my_pkg.module:MyExecutor"`). An executor implements runner.executors.base.Executor (ExecutorBase has
the defaults); its factory is called with the keyword arguments `environ` and `out`."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from runner.errors import RunnerError
from runner.plugins import entry_point_refs, resolve

if TYPE_CHECKING:
    from runner.executors.base import Executor

GROUP = "robo_runner.executors"
_BUILTIN: dict[str, str] = {"docker": "runner.executors.docker:DockerExecutor",
                            "local": "runner.executors.local:LocalExecutor",
                            "slurm": "runner.executors.slurm:SlurmExecutor"}
_REGISTERED: dict[str, Callable[..., Any] | str] = {}


class UnknownExecutor(RunnerError):
    def __init__(self, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        super().__init__(f"unknown executor {name!r}: {hint}known executors are {', '.join(known)} (a package adds "
                         f"one with runner.executors.register or the entry-point group {GROUP})")


def register(name: str, factory: Callable[..., Any] | str) -> None:
    """Make `name` an executor: `factory(environ=..., out=...)` returns it (or "module:attribute" naming it)."""
    _REGISTERED[name] = factory


def _plugins() -> dict[str, str]:
    return entry_point_refs(GROUP)


def names() -> list[str]:
    return sorted({**_BUILTIN, **_plugins(), **_REGISTERED})


def factory(name: str) -> Callable[..., Any]:
    """The factory (usually the class) of executor `name`, not called; UnknownExecutor otherwise."""
    target = _REGISTERED.get(name) or _plugins().get(name) or _BUILTIN.get(name)
    if target is None:
        raise UnknownExecutor(name, names())
    found: Callable[..., Any] = resolve(target) if isinstance(target, str) else target
    return found


def make_executor(name: str, environ: Mapping[str, str] | None = None, out: BinaryIO | None = None) -> Executor:
    """The executor called `name`; UnknownExecutor (naming the known ones) otherwise."""
    executor: Executor = factory(name)(environ=environ, out=out)
    return executor


def render_command(plan: Any) -> tuple[str, list[str]]:
    """(the command as `runner plan` prints it, its argv) for the plan's executor, without making the executor
    (no engine is contacted): its class's `render_command`, else ExecutorBase's (the step's process here)."""
    from runner.executors.base import ExecutorBase

    render = getattr(factory(plan.executor), "render_command", ExecutorBase.render_command)
    out: tuple[str, list[str]] = render(plan)
    return out
