"""Executors by name. Imports stay inside make_executor: the Docker SDK loads only when docker is used."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from runner.executors.base import Executor


def make_executor(name: str, environ: Mapping[str, str] | None = None, out: BinaryIO | None = None) -> Executor:
    """The executor called `name` ("docker", "local" or "slurm")."""
    if name == "slurm":
        from runner.executors.slurm import SlurmExecutor

        return SlurmExecutor(out=out)
    if name == "docker":
        from runner.executors.docker import DockerExecutor

        return DockerExecutor(environ=environ, out=out)
    from runner.executors.local import LocalExecutor

    return LocalExecutor(environ=environ, out=out)
