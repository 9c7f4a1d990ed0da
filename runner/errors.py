"""The runner's error tree: every user-facing failure is a RunnerError, printed by the CLI without a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class RunnerError(Exception):
    """Root of all errors the runner reports to the user."""

    exit_code = 1


@dataclass(frozen=True)
class SpecProblem:
    """One problem in a job file, located as precisely as the YAML allows."""

    file: Path
    line: int | None
    column: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f"{self.key}: " if self.key else ""
        return f"{where}: {key}{self.message}"


class SpecError(RunnerError):
    """A job file that cannot be used; carries every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.column or 0))
        problems = self.problems
        n = len(problems)
        head = f"{n} problem{'s' if n != 1 else ''} in {problems[0].file}" if problems else "invalid job"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in problems))


class JobNotFoundError(RunnerError):
    """A job named on the command line is neither a file nor a known job name."""

    exit_code = 2


class ImageError(RunnerError):
    """An image could not be rendered or built."""

    def __init__(self, tag: str, reason: str) -> None:
        self.tag = tag
        self.reason = reason
        super().__init__(f"image {tag}: {reason}")


class ExecutorError(RunnerError):
    """The engine that runs steps (docker, a subprocess) failed or is unreachable."""

    def __init__(self, executor: str, reason: str) -> None:
        self.executor = executor
        self.reason = reason
        super().__init__(f"{executor} executor: {reason}")


class PreflightError(RunnerError):
    """A check before starting anything failed; nothing was built or started."""

    exit_code = 3

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("refused before starting:\n" + "\n".join(f"  - {r}" for r in reasons))


class RecordError(RunnerError):
    """A run record is missing or unreadable."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


class BadRunRefError(RecordError):
    """A job or run name from the command line that could name something outside the runs folder."""

    exit_code = 2


class RunActiveError(RecordError):
    """The run is still running (or pending): stop it before removing it."""


class LockError(RunnerError):
    """Another run of the same job holds the job's lock."""

    exit_code = 4


class StepNotImplementedError(RunnerError):
    """A step exists in the spec but its implementation has not landed yet."""

    exit_code = 5
