"""What a step gets from the runner: the context JSON named by $RUNNER_CONTEXT (paths as this process sees them)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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

    def path(self, key: str) -> Path:
        value = self.paths.get(key)
        if not value:
            msg = f"the job has no {key} path; set data.{key} in {self.job}'s job file"
            raise SystemExit(msg)
        return Path(value)


def _requeued(data: dict[str, Any]) -> bool:
    """A training step that Slurm restarted (requeue after preemption or time limit) resumes by itself."""
    return data.get("step") == "train" and os.environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")


def load_context(path: str | None = None) -> StepContext:
    source = path or os.environ.get("RUNNER_CONTEXT")
    if not source:
        msg = "RUNNER_CONTEXT is not set: steps are started by the runner (`runner convert JOB`)"
        raise SystemExit(msg)
    data = json.loads(Path(source).read_text())
    return StepContext(job=data["job"], policy=data["policy"], task=data.get("task"), step=data["step"],
                       run_id=data["run_id"], run_dir=Path(data["run_dir"]), resume=bool(data.get("resume")) or _requeued(data),
                       mode=data.get("mode", "run"), paths=data["paths"], options=data["options"], spec=data["spec"])
