"""Run preparation: which steps run, the sample inputs a job makes on first use, everything preflight checks, and
the run record every step is then written into. Nothing here starts a step (runner/stepping.py does)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import datetime

from policies import PIPELINE
from runner import preflight, records
from runner.atomic import free_bytes, write_text_atomic
from runner.errors import SpecError, SpecProblem
from runner.jobs import JOB_COPY, JOB_SOURCE
from runner.machine import git_info
from runner.plan import job_dir, redact_spec
from runner.plugins import resolve
from runner.records import RunRecord
from runner.spec.load import LoadedJob

#: How run preparation, the orchestrator and step running tell the user what happens (one line at a time).
Say = Callable[[str], None]


def pipeline_steps(job: LoadedJob) -> list[str]:
    """Steps `runner run JOB` runs: the job's listed steps in pipeline order (deploy only by name)."""
    listed = job.step_names()
    if not job.policy.fixed_steps:
        return listed
    return [s for s in PIPELINE if s in listed]


def check_steps(job: LoadedJob, steps: list[str]) -> None:
    from runner.spec.errors_fmt import suggest

    listed = job.step_names()
    known = list(dict.fromkeys([*listed, *job.policy.steps])) if job.policy.fixed_steps else listed
    problems = []
    for s in steps:
        if s in listed:
            continue
        hint = suggest(s, known)
        if s in known or not (job.policy.fixed_steps or hint):
            fix = f"Add `{s}:` under steps to run it with its defaults"
        elif hint:
            fix = "D" + hint.strip("; ")[1:]  # "Did you mean 'train'?"
        else:
            fix = f"The {job.policy.name} steps are {', '.join(job.policy.steps)}"
        problems.append(SpecProblem(job.file, None, None, "steps",
                                    f"the job has no step {s!r}; it lists: {', '.join(listed) or 'none'}. {fix}"))
    if problems:
        raise SpecError(problems)


def prepare_inputs(job: LoadedJob, steps: list[str], say: Say) -> None:
    """The sample job's demos are generated on first use (`convert.sample_if_missing`)."""
    opts = job.step("convert") if "convert" in steps else None
    raw = job.spec.data.raw
    if opts is not None and getattr(opts, "sample_if_missing", False) and raw is not None and not raw.exists():
        from policies.data.sample import generate

        say(f"generating sample demonstrations in {raw}")
        tmp = raw.with_name(f".{raw.name}.tmp-{os.getpid()}")
        generate(tmp, **({"camera": opts.camera} if hasattr(opts, "camera") else {}))
        os.replace(tmp, raw)
    maker = job.policy.sample_weights
    if opts is not None and getattr(opts, "sample_if_missing", False) and maker:
        resolve(maker)(dict(job.spec.weights), list(getattr(opts, "instructions", [])), say)


def preflight_reasons(job: LoadedJob, steps: list[str], here: bool = True) -> list[str]:
    """What stops the run before anything starts: missing or unreadable inputs (the converted data may be missing
    when convert runs first), disk and (`here`: the steps run on this machine, not on Slurm's nodes) memory."""
    reasons = [str(i) for s in steps for i in preflight.check_paths(job, s)
               if not (i.key == "data.converted" and i.problem == "missing" and "convert" in steps)]
    reasons += preflight.check_disk(job.spec.outputs.runs_dir, free_bytes(job.spec.outputs.runs_dir))
    if here:
        reasons += preflight.check_memory(job, steps, preflight.gather_memory())
    return list(dict.fromkeys(reasons))


def checkpoint_warnings(job: LoadedJob, steps: list[str]) -> list[str]:
    """Steps whose checkpoints will not fit on the runs folder's disk (preflight.checkpoint_disk_warnings)."""
    return preflight.checkpoint_disk_warnings(job, steps, free_bytes(job.spec.outputs.runs_dir))


def new_record(job: LoadedJob, run_id: str, executor: str, resume: bool, steps: list[str], now: datetime,
               say: Say) -> RunRecord:
    """The run's record with every step listed as pending, saved, and the job file kept beside the runs."""
    runs = job.spec.outputs.runs_dir
    record = RunRecord(
        job=job.name, run_id=run_id, policy=job.policy.name, job_file=str(job.file),
        spec_as_written=redact_text(job), spec_resolved=redact_spec(job.spec.model_dump(mode="json")),
        host=socket.gethostname(), git=git_info(job.file), executor=executor, status="running",
        started=now.isoformat(timespec="seconds"), resume=resume, overrides=list(job.overrides))
    for name in steps:  # every step is listed from the start: a runner that dies leaves the rest "pending"
        record.step(name)
    path = records.save(record, runs)
    write_text_atomic(job_dir(job) / JOB_COPY, redact_text(job))
    write_text_atomic(job_dir(job) / JOB_SOURCE, str(job.file) + "\n")
    say(f"run {job.name}/{run_id} -> {path.parent}")
    return record


def redact_text(job: LoadedJob) -> str:
    """The job text with literal secret values replaced; `${oc.env:NAME}` references stay as written."""
    text = job.text
    for _, _, value in preflight.literal_secret_values(job):
        text = text.replace(value, "<redacted>")
    return text
