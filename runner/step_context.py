"""The step context: what the runner hands a step, as the JSON file named by $RUNNER_CONTEXT. One class writes it
(the host, runner/plan.py and runner/orchestrate.py) and reads it back (the step, policies/entry.py), so the two
sides cannot drift apart; `schema_version` tells an image built from older (or newer) code apart.

The step's options travel as their JSON dump and are validated again in the step, against the same typed model
the host validated the job with (`read(path, options_model)`): a step sees `ctx.options` as that model, never a
dict, and a default is declared in one place (the job model)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, SerializeAsAny, ValidationError

from runner.atomic import write_text_atomic
from runner.spec.models import StepSpec

SCHEMA_VERSION = 2
OptionsT = TypeVar("OptionsT", bound=StepSpec)


class StepInputError(ValueError):
    """What a step was given cannot work (a path the job lacks, an option missing, a context it cannot read): the
    step stops with exit 2 and this message, no traceback (policies.entry)."""


class StepContext(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    job: str
    policy: str
    task: str | None
    step: str
    run_id: str
    run_dir: Path
    resume: bool = False
    resume_from: str | None = None  # `--from`: a lineage name or a checkpoint path (policies/lineage.py)
    mode: str = "run"  # "run", or "check" for `runner convert --check`
    paths: dict[str, Any]
    options: SerializeAsAny[StepSpec]  # the step's own model (Dp3Train, ...); secrets redacted
    spec: dict[str, Any]  # the whole job, secrets redacted
    host_paths: dict[str, str] | None = None  # container path -> host path (docker); None where they are the same

    def path(self, key: str) -> Path:
        value = self.paths.get(key)
        if not value:
            msg = f"the job has no {key} path; set data.{key} in {self.job}'s job file"
            raise StepInputError(msg)
        return Path(value)

    def typed(self, model: type[OptionsT]) -> OptionsT:
        """`options` as `model` (the step function's own options class); a mismatch is a programming error."""
        if not isinstance(self.options, model):
            msg = f"step {self.step} of {self.policy} got {type(self.options).__name__} options, not {model.__name__}"
            raise TypeError(msg)
        return self.options

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def write(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=2))

    @classmethod
    def read(cls, path: Path, options_model: type[StepSpec] = StepSpec) -> StepContext:
        """The context at `path`, its options validated as `options_model` (StepInputError naming what is wrong)."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            msg = f"cannot read the step context {path}: {e}"
            raise StepInputError(msg) from e
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            msg = (f"{path} is a step context of schema {version}, this step reads {SCHEMA_VERSION}: the image was "
                   "built from other code than the runner's; rebuild it (`runner build JOB`)")
            raise StepInputError(msg)
        try:
            options = options_model.model_validate(data.get("options", {}))
            ctx = cls.model_validate({**data, "options": options})
        except ValidationError as e:
            msg = f"the step context {path} does not validate: {e}"
            raise StepInputError(msg) from e
        return ctx.requeued() if ctx.step == "train" else ctx

    def requeued(self) -> StepContext:
        """A training step that Slurm restarted (requeue after preemption or time limit) resumes by itself."""
        if os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0"):
            return self
        return self.model_copy(update={"resume": True})
