"""Shared fixtures. Markers: docker / slurm / gpu tests skip when the resource is absent, unless CI demands it."""

from __future__ import annotations

import os
import shutil
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.netif import Interface
from runner.plan import Machine

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """The Ctrl-C tests send SIGINT to a runner started as from a terminal. A suite started in the background by a
    non-interactive shell (`bash .ci/run &`) inherits SIGINT ignored, and so would every runner it starts (an
    ignored signal stays ignored across exec, as POSIX wants for background jobs): give the suite Python's own
    handler back, which its children get as the default disposition."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _docker_ok() -> str | None:
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as e:
        return f"no Docker engine: {e}"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    required = set(filter(None, os.environ.get("RUNNER_REQUIRE", "").split(",")))
    reasons: dict[str, str | None] = {}
    for item in items:
        for marker in ("docker", "slurm", "gpu"):
            if marker not in item.keywords:
                continue
            if marker not in reasons:
                reasons[marker] = _probe(marker)
            reason = reasons[marker]
            if reason and marker in required:
                item.add_marker(pytest.mark.xfail(reason=f"required but unavailable: {reason}", strict=True, run=False))
            elif reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def _probe(marker: str) -> str | None:
    if marker == "docker":
        return _docker_ok()
    if marker == "slurm":
        return None if shutil.which("sbatch") else "no sbatch on PATH"
    try:
        import torch

        return None if torch.cuda.is_available() else "no CUDA device"
    except ImportError:
        return "torch is not installed"


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    """A fixed machine, so plans are reproducible in snapshots."""
    return Machine(uid=1000, gid=1000, hostname="ws", code_dir=Path("/src/robo-runner"), python="/usr/bin/python3",
                   interfaces=(Interface("lo", True, True, "127.0.0.1"), Interface("enp5s0", True, False, "10.0.0.5"),
                               Interface("docker0", True, False, "172.17.0.1")),
                   environ={"WANDB_API_KEY": "sekrit", "WANDB_PROJECT": "lab", "HOME": "/home/u"})


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job file under tmp/jobs/ and return its path."""
    (tmp_path / "jobs").mkdir(exist_ok=True)

    def write(text: str, name: str = "job.yaml") -> Path:
        path = tmp_path / "jobs" / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture(scope="session")
def slurm_image_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One slurm.image_cache for the session's Docker-runtime Slurm tests: an image is saved there once per content
    tag, as on a cluster, and not again by each test."""
    return tmp_path_factory.mktemp("image-cache")
