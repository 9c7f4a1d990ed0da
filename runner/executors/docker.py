"""Docker executor through the Docker SDK. The only module (with docker_build) that imports `docker`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import docker
import docker.errors
from docker.models.containers import Container

from runner.dockerargs import to_sdk_kwargs
from runner.errors import ExecutorError, ImageError
from runner.executors.base import EngineCheck, ExecutorBase, StepHandle, StepOutcome
from runner.plan import StepPlan
from runner.records import StepRecord

if TYPE_CHECKING:
    from runner.spec.load import LoadedJob

INSTALL_HINT = ("Install and start the Docker engine (as root: `apt-get install -y docker.io && dockerd &`, "
                "or `make setup`), or run with `--executor local` to use this Python environment instead.")


def connect(timeout: int = 60) -> docker.DockerClient:
    """A client for the local engine; ExecutorError with what to do when none answers."""
    return _connect(timeout)[0]


def _connect(timeout: int = 60) -> tuple[docker.DockerClient, dict[str, Any]]:
    # `info` doubles as the ping: one round trip tells both that the engine answers and what it has.
    try:
        client = docker.from_env(timeout=timeout)
        info: dict[str, Any] = client.info()
    except docker.errors.DockerException as e:
        msg = f"no Docker engine answers ({_short(e)}). {INSTALL_HINT}"
        raise ExecutorError(DockerExecutor.name, msg) from e
    return client, info


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) < 200 else text[:200] + "..."


class DockerExecutor(ExecutorBase):
    name = "docker"
    checks_gpu_runtime = True
    context_key = "docker"

    def image_builder(self, job: Any) -> str | None:
        return self.name

    def recorded_command(self, plan: StepPlan) -> list[str]:
        from runner.dockerargs import render_cli

        return render_cli(plan.docker)

    @staticmethod
    def render_command(plan: StepPlan) -> tuple[str, list[str]]:
        """The `docker run` line, rendered from the same DockerRunArgs the SDK call gets."""
        from runner.dockerargs import render_cli, render_shell

        argv = render_cli(plan.docker)
        return render_shell(argv), argv

    def __init__(self, client: Any = None, environ: Mapping[str, str] | None = None,
                 out: BinaryIO | None = None, grace_s: float | None = None) -> None:
        self._client = client
        self._info: dict[str, Any] | None = None
        self.environ = dict(os.environ if environ is None else environ)
        self.out = out or sys.stdout.buffer
        self.grace_s = grace_s

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client, self._info = _connect()
        return self._client

    @property
    def info(self) -> dict[str, Any]:
        """The engine's `docker info`, fetched once (with the connection, when this executor made it)."""
        client = self.client
        if self._info is None:
            self._info = client.info()
        return self._info

    def run_step(self, plan: StepPlan, on_start: Callable[[StepHandle], None]) -> StepOutcome:
        kwargs = to_sdk_kwargs(plan.docker, self.environ)
        try:
            container: Container = self.client.containers.create(**kwargs)
        except docker.errors.ImageNotFound as e:
            raise ImageError(plan.docker.image, "not found in the engine; run `runner build <job>`") from e
        except docker.errors.APIError as e:
            msg = "docker"
            raise ExecutorError(msg, f"cannot create the container: {e.explanation or e}") from e
        interrupted = False
        try:
            on_start(StepHandle({"container_id": container.id}))
            try:
                container.start()
            except docker.errors.APIError as e:
                msg = f"the container did not start: {e.explanation or e}"
                raise ExecutorError(self.name, msg) from e
            try:
                for chunk in container.logs(stream=True, follow=True):
                    self.out.write(chunk)
                    self.out.flush()
                status = container.wait()
            except KeyboardInterrupt:
                interrupted = True
                status = self._stop(container, self.grace_s if self.grace_s is not None else plan.stop_grace_s)
            code = int(status.get("StatusCode", 1))
            oom = False
            if code != 0:  # only a failure needs the container's state (one round trip saved on success)
                container.reload()
                oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
            return StepOutcome(exit_code=code, oom_killed=oom, interrupted=interrupted)
        finally:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)

    def _stop(self, container: Container, grace_s: float) -> dict[str, Any]:
        """docker stop: SIGTERM, SIGKILL after the grace period. A second Ctrl-C kills at once."""
        try:
            container.stop(timeout=int(grace_s))
        except KeyboardInterrupt:
            container.kill()
        result: dict[str, Any] = container.wait()
        return result

    def stop(self, step: StepRecord, grace_s: float) -> bool:
        if not step.handle.get("container_id"):
            return False
        try:
            c = self.client.containers.get(step.handle["container_id"])
        except docker.errors.NotFound:
            return False
        if c.status != "running":
            return False
        c.stop(timeout=int(grace_s))
        return True

    def is_alive(self, step: StepRecord) -> bool:
        if not step.handle.get("container_id"):
            return False
        try:
            return bool(self.client.containers.get(step.handle["container_id"]).status == "running")
        except docker.errors.NotFound:
            return False

    def release(self, step: StepRecord) -> None:
        if not step.handle.get("container_id"):
            return
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            c = self.client.containers.get(step.handle["container_id"])
            if c.status != "running":
                c.reload()
                step.detail = f"container exited ({c.attrs.get('State', {}).get('ExitCode')}), removed"
                if c.attrs.get("State", {}).get("OOMKilled"):
                    step.detail += "; it was OOM-killed"
                c.remove(force=True)

    def engine_checks(self, job: LoadedJob, environ: Mapping[str, str], gpus: bool) -> EngineCheck:
        from runner import preflight
        from runner.atomic import free_bytes
        from runner.images import plan_image

        runtimes, cdi, root = self.engine_facts()
        plan = plan_image(job.spec.image, job.policy, environ)
        image_id = self.image_id(plan.tag)
        free = free_bytes(Path(root)) if Path(root).exists() else None
        facts = preflight.EngineFacts(runtimes if gpus else ("nvidia",), cdi, free, image_id is not None)
        return EngineCheck(plan, image_id, tuple(preflight.check_engine(job, facts)))

    def ensure_image(self, job: LoadedJob, plan: Any, log: Path, out: BinaryIO, rebuild: bool,
                     known_id: str | None) -> dict[str, Any]:
        from runner.executors.docker_build import ensure_image

        result = ensure_image(self.client, plan, log, out, rebuild=rebuild, known_id=known_id)
        return {"tag": result.tag, "id": result.id, "built": result.built}

    def engine_facts(self) -> tuple[tuple[str, ...], bool, str]:
        """(runtimes, CDI GPU devices present, docker root dir)."""
        info = self.info
        runtimes = tuple(sorted((info.get("Runtimes") or {}).keys()))
        cdi = any("nvidia.com/gpu" in str(d) for d in (info.get("DiscoveredDevices") or []))
        return runtimes, cdi, str(info.get("DockerRootDir", "/var/lib/docker"))

    def image_id(self, tag: str) -> str | None:
        try:
            return str(self.client.images.get(tag).id)
        except docker.errors.ImageNotFound:
            return None
