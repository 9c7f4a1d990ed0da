"""The executor interface. Docker and local run a step in the foreground; a batch scheduler (Slurm) fits the
same shape: run_step = submit + poll + follow the log file, stop = cancel, is_alive = queue state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from runner.plan import StepPlan
from runner.records import StepRecord

if TYPE_CHECKING:
    from runner.spec.load import LoadedJob


@dataclass(frozen=True)
class StepHandle:
    """What an executor records to find its step again (StepRecord.handle): its own keys, JSON values."""

    data: dict[str, Any] = field(default_factory=dict)


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


class ExecutorBase:
    """Defaults an executor can keep: no image, the plan as it is, the step's argv on this machine."""

    name = "base"
    #: Whether the engine's GPU runtime must exist here (the steps run on this machine's engine).
    checks_gpu_runtime = False
    #: Which of the plan's step contexts the step reads: paths as the container sees them ("docker") or as this
    #: machine does ("local").
    context_key = "local"

    def image_builder(self, job: LoadedJob) -> str | None:
        return None

    def prepare(self, job: LoadedJob, plan: StepPlan, python: str) -> StepPlan:
        return plan

    def recorded_command(self, plan: StepPlan) -> list[str]:
        return list(plan.local.argv)

    def image_ready(self, job: LoadedJob, builder: Any, tag: str, say: Callable[[str], None]) -> None:
        return None

    def release(self, step: StepRecord) -> None:
        return None
