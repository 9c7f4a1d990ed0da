"""Run a job: prepare (runner/preparation.py: steps, inputs, preflight, record), lock, image, then the steps
(runner/stepping.py). The orchestrator knows executors only through their protocol (runner/executors/base.py)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

from runner import records
from runner.errors import PreflightError, RunnerError
from runner.executors.base import Executor
from runner.machine import gather_machine
from runner.plan import Machine, job_dir
from runner.preparation import (
    Say,
    check_steps,
    checkpoint_warnings,
    new_record,
    pipeline_steps,
    preflight_reasons,
    prepare_inputs,
    redact_text,
)
from runner.records import JobLock, RunRecord
from runner.spec.load import LoadedJob
from runner.stepping import STOP_CODES, StepRunner


@dataclass
class RunRequest:
    job: LoadedJob
    steps: list[str] = field(default_factory=list)  # empty: the job's pipeline
    executor: str | None = None  # None: the job's
    resume: bool = False
    resume_from: str | None = None  # `--from`: a lineage name or a checkpoint (policies/lineage.py)
    rebuild: bool = False
    mode: str = "run"  # "check": the step only checks its inputs (`runner convert --check`)


class Orchestrator:
    """Owns one run. Executors and clocks are injected so tests can drive it without docker."""

    def __init__(self, environ: Mapping[str, str], say: Say, out: BinaryIO | None = None,
                 now: Callable[[], datetime] = datetime.now,
                 make_executor: Callable[[str], Executor] | None = None, machine: Machine | None = None) -> None:
        self.environ = dict(environ)
        self.say = say
        self.out = out or sys.stdout.buffer
        self.now = now
        self._make_executor = make_executor or self._default_executor
        self.machine = machine or gather_machine(self.environ)

    def _default_executor(self, name: str) -> Executor:
        from runner.executors import make_executor

        return make_executor(name, self.environ, self.out)

    def run(self, req: RunRequest) -> RunRecord:
        job = req.job
        steps = req.steps or pipeline_steps(job)
        check_steps(job, steps)
        executor_name = req.executor or job.spec.executor
        prepare_inputs(job, steps, self.say)
        executor = self._make_executor(executor_name)
        reasons = preflight_reasons(job, steps, executor.runs_here)
        # The image is built here by the engine the executor names (docker for docker, and for Slurm's container
        # runtimes: the nodes run this image).
        builder_name = executor.image_builder(job)
        builder = None if builder_name is None else (
            executor if builder_name == executor.name else self._make_executor(builder_name))
        check = builder.engine_checks(job, self.environ, executor.checks_gpu_runtime) if builder is not None else None
        reasons = list(dict.fromkeys([*reasons, *(check.reasons if check else ())]))
        if reasons:
            raise PreflightError(reasons)
        for warning in checkpoint_warnings(job, steps):
            self.say(f"[yellow]{warning}[/]")
        lock = JobLock(job_dir(job), job.name)
        run_id = records.new_run_id(self.now())
        lock.acquire({"run": run_id, "pid": os.getpid(), "host": self.machine.hostname})
        try:
            record = new_record(job, run_id, executor_name, req.resume, steps, self.now(), self.say)
            tag = ""
            if builder is not None and check is not None and check.plan is not None:
                tag = self._ensure_image(job, builder, record, check.plan, check.image_id, req.rebuild)
                executor.image_ready(job, builder, tag, self.say)
            StepRunner(executor, self.machine, self.say, self.now).run(job, steps, record, tag, req)
        finally:
            lock.release()
        return record

    def _ensure_image(self, job: LoadedJob, builder: Executor, record: RunRecord, plan: Any, image_id: str | None,
                      rebuild: bool) -> str:
        log = job_dir(job) / record.run_id / "build.log"
        record.image = builder.ensure_image(job, plan, log, self.out, rebuild, image_id)
        self.say(f"image {record.image['tag']} " + ("built" if record.image["built"] else "up to date"))
        records.save(record, job.spec.outputs.runs_dir)
        return str(record.image["tag"])


def exit_code_of(record: RunRecord) -> int:
    """The CLI's exit status for a finished run: the failing step's code, 130 when interrupted."""
    if record.status == "interrupted":
        return 130
    for s in record.steps:
        if s.status == "failed":
            return s.exit_code or 1
    return 0


def dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


__all__ = ["STOP_CODES", "Orchestrator", "RunRequest", "RunnerError", "check_steps", "exit_code_of", "pipeline_steps",
           "redact_text"]
