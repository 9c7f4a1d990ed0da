"""The executor interface. Docker and local run a step in the foreground; a batch scheduler (Slurm) fits the
same shape: run_step = submit + poll + follow the log file, stop = cancel, is_alive = queue state."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from runner.plan import StepPlan
from runner.records import StepRecord

if TYPE_CHECKING:
    from runner.spec.load import LoadedJob


@dataclass(frozen=True)
class StepHandle:
    """What an executor records to find its step again (StepRecord.handle): its own keys, JSON values."""

    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineCheck:
    """An image builder's preflight (Executor.engine_checks)."""

    plan: Any = None  # runner.images.ImagePlan of the job's image; None: this executor builds none
    image_id: str | None = None  # the image's id when it is built already
    reasons: tuple[str, ...] = ()  # what the engine lacks for this job


@dataclass(frozen=True)
class StepOutcome:
    exit_code: int
    oom_killed: bool = False
    interrupted: bool = False
    requeues: int = 0
    detail: str | None = None  # the executor's own word on how it ended (Slurm's final state)


class Executor(Protocol):
    name: str
    checks_gpu_runtime: bool
    #: Whether the steps run on this machine (its memory bounds them); Slurm's run on the nodes.
    runs_here: bool
    context_key: str

    def run_step(self, plan: StepPlan, on_start: Callable[[StepHandle], None]) -> StepOutcome:
        """Start the step, stream its output, return when it ends. Ctrl-C stops it (TERM, then KILL)."""
        ...

    def stop(self, step: StepRecord, grace_s: float) -> bool:
        """Stop a step started by another runner process; False when it was not running."""
        ...

    def is_alive(self, step: StepRecord) -> bool:
        """Whether the step still runs; may refresh `step.detail` with what the executor knows (Slurm's state)."""
        ...

    def release(self, step: StepRecord) -> None:
        """Remove what a step whose runner died left behind (an exited container); nothing to do elsewhere."""
        ...

    def image_builder(self, job: LoadedJob) -> str | None:
        """The executor whose engine builds the job's image before the steps run ("docker"), or None."""
        ...

    def prepare(self, job: LoadedJob, plan: StepPlan, python: str) -> StepPlan:
        """The step's plan as this executor runs it (Slurm adds its batch script)."""
        ...

    def recorded_command(self, plan: StepPlan) -> list[str]:
        """What the run record shows as the step's command."""
        ...

    def image_ready(self, job: LoadedJob, builder: Any, tag: str, say: Callable[[str], None]) -> None:
        """Called once the image is built, before the first step (Slurm puts it where its nodes find it)."""
        ...

    def engine_checks(self, job: LoadedJob, environ: Mapping[str, str], gpus: bool) -> EngineCheck:
        """An image builder's preflight: the job's image plan, its id when built already, and what the engine lacks
        (its GPU runtime only when `gpus`: the steps run on this engine). Other executors: nothing to check."""
        ...

    def ensure_image(self, job: LoadedJob, plan: Any, log: Path, out: BinaryIO, rebuild: bool,
                     known_id: str | None) -> dict[str, Any]:
        """An image builder builds (or finds) the image: {"tag", "id", "built"}."""
        ...


class ExecutorBase:
    """Defaults an executor can keep: no image, the plan as it is, the step's argv on this machine."""

    name = "base"
    #: Whether the engine's GPU runtime must exist here (the steps run on this machine's engine).
    checks_gpu_runtime = False
    runs_here = True
    #: Which of the plan's step contexts the step reads: paths as the container sees them ("docker") or as this
    #: machine does ("local").
    context_key = "local"

    def image_builder(self, job: LoadedJob) -> str | None:
        return None

    def prepare(self, job: LoadedJob, plan: StepPlan, python: str) -> StepPlan:
        return plan

    def recorded_command(self, plan: StepPlan) -> list[str]:
        return list(plan.local.argv)

    @staticmethod
    def render_command(plan: StepPlan) -> tuple[str, list[str]]:
        """(what `runner plan` prints, the argv): the step's process on this machine, secrets by name only."""
        import shlex

        local = plan.local
        env = " ".join(f"{k}=<secret>" if k in local.secrets else f"{k}={shlex.quote(v)}" for k, v in local.env)
        text = f"cd {shlex.quote(local.cwd)} && env {env} \\\n    " + " ".join(shlex.quote(x) for x in local.argv)
        return text, list(local.argv)

    def image_ready(self, job: LoadedJob, builder: Any, tag: str, say: Callable[[str], None]) -> None:
        return None

    def engine_checks(self, job: LoadedJob, environ: Mapping[str, str], gpus: bool) -> EngineCheck:
        return EngineCheck()

    def ensure_image(self, job: LoadedJob, plan: Any, log: Path, out: BinaryIO, rebuild: bool,
                     known_id: str | None) -> dict[str, Any]:
        msg = f"executor {self.name} builds no images"
        raise NotImplementedError(msg)

    def release(self, step: StepRecord) -> None:
        return None
