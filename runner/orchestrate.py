"""Run a job's steps: preflight, lock, record, image, then each step through its executor, with diagnosis."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from policies import PIPELINE
from runner import preflight, records
from runner.atomic import free_bytes, write_text_atomic
from runner.diagnose import FailureFacts, classify, tail_text
from runner.errors import PreflightError, RunnerError, SpecError, SpecProblem
from runner.executors.base import Executor, StepHandle
from runner.images import ImagePlan
from runner.jobs import JOB_COPY, JOB_SOURCE
from runner.machine import gather_machine, git_info
from runner.plan import Machine, StepPlan, build_plan, job_dir, redact_spec
from runner.plugins import resolve
from runner.records import JobLock, RunRecord, StepRecord
from runner.spec.load import LoadedJob

Say = Callable[[str], None]
#: Exit codes of a step ended by SIGINT / SIGTERM (Ctrl-C, `runner stop`, `docker stop`).
STOP_CODES = (130, 143)


@dataclass
class RunRequest:
    job: LoadedJob
    steps: list[str] = field(default_factory=list)  # empty: the job's pipeline
    executor: str | None = None  # None: the job's
    resume: bool = False
    resume_from: str | None = None  # `--from`: a lineage name or a checkpoint (policies/lineage.py)
    rebuild: bool = False
    mode: str = "run"  # "check": the step only checks its inputs (`runner convert --check`)


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
        self._prepare_inputs(job, steps)
        reasons = [str(i) for s in steps for i in preflight.check_paths(job, s)
                   if not (i.key == "data.converted" and i.problem == "missing" and "convert" in steps)]
        reasons += preflight.check_disk(job.spec.outputs.runs_dir,
                                        free_bytes(job.spec.outputs.runs_dir))
        reasons += preflight.check_memory(job, steps, preflight.gather_memory())
        reasons = list(dict.fromkeys(reasons))
        executor = self._make_executor(executor_name)
        image: dict[str, Any] = {}
        image_plan, image_id = None, None
        # The image is built here by the engine the executor names (docker for docker, and for Slurm's container
        # runtimes: the nodes run this image).
        builder_name = executor.image_builder(job)
        builder = None if builder_name is None else (
            executor if builder_name == executor.name else self._make_executor(builder_name))
        if builder is not None:
            image_plan, image_id, engine_reasons = self._engine_checks(job, builder, gpus=executor.checks_gpu_runtime)
            reasons += engine_reasons
        if reasons:
            raise PreflightError(reasons)
        lock = JobLock(job_dir(job), job.name)
        run_id = records.new_run_id(self.now())
        lock.acquire({"run": run_id, "pid": os.getpid(), "host": self.machine.hostname})
        try:
            record = self._new_record(job, run_id, executor_name, req.resume, steps)
            if image_plan is not None and builder is not None:
                image = self._ensure_image(job, builder, record, image_plan, image_id, req.rebuild)
                executor.image_ready(job, builder, image["tag"], self.say)
            self._run_steps(job, steps, executor, record, image.get("tag", ""), req)
        finally:
            lock.release()
        return record

    def _engine_checks(self, job: LoadedJob, executor: Executor, gpus: bool = True
                       ) -> tuple[ImagePlan | None, str | None, list[str]]:
        """The job's image plan, its id when already built, and what the engine lacks for this job (its GPU runtime
        only where the steps run on this engine, not on Slurm's nodes)."""
        from runner.executors.docker import DockerExecutor
        from runner.images import plan_image

        if not isinstance(executor, DockerExecutor):
            return None, None, []
        runtimes, cdi, root = executor.engine_facts()
        plan = plan_image(job.spec.image, job.policy, self.environ)
        image_id = executor.image_id(plan.tag)
        free = free_bytes(Path(root)) if Path(root).exists() else None
        facts = preflight.EngineFacts(runtimes if gpus else ("nvidia",), cdi, free, image_id is not None)
        return plan, image_id, preflight.check_engine(job, facts)

    def _ensure_image(self, job: LoadedJob, executor: Executor, record: RunRecord, plan: ImagePlan,
                      image_id: str | None, rebuild: bool) -> dict[str, Any]:
        from runner.executors.docker import DockerExecutor
        from runner.executors.docker_build import ensure_image

        assert isinstance(executor, DockerExecutor)
        log = job_dir(job) / record.run_id / "build.log"
        result = ensure_image(executor.client, plan, log, self.out, rebuild=rebuild, known_id=image_id)
        self.say(f"image {result.tag} " + ("built" if result.built else "up to date"))
        record.image = {"tag": result.tag, "id": result.id, "built": result.built}
        records.save(record, job.spec.outputs.runs_dir)
        return record.image

    def _new_record(self, job: LoadedJob, run_id: str, executor: str, resume: bool, steps: list[str]) -> RunRecord:
        runs = job.spec.outputs.runs_dir
        record = RunRecord(
            job=job.name, run_id=run_id, policy=job.policy.name, job_file=str(job.file),
            spec_as_written=redact_text(job), spec_resolved=redact_spec(job.spec.model_dump(mode="json")),
            host=socket.gethostname(), git=git_info(job.file), executor=executor, status="running",
            started=self.now().isoformat(timespec="seconds"), resume=resume, overrides=list(job.overrides))
        for name in steps:  # every step is listed from the start: a runner that dies leaves the rest "pending"
            record.step(name)
        path = records.save(record, runs)
        write_text_atomic(job_dir(job) / JOB_COPY, redact_text(job))
        write_text_atomic(job_dir(job) / JOB_SOURCE, str(job.file) + "\n")
        self.say(f"run {job.name}/{run_id} -> {path.parent}")
        return record

    def _prepare_inputs(self, job: LoadedJob, steps: list[str]) -> None:
        """The sample job's demos are generated on first use (`convert.sample_if_missing`)."""
        opts = job.step("convert") if "convert" in steps else None
        raw = job.spec.data.raw
        if opts is not None and getattr(opts, "sample_if_missing", False) and raw is not None and not raw.exists():
            from policies.data.sample import generate

            self.say(f"generating sample demonstrations in {raw}")
            tmp = raw.with_name(f".{raw.name}.tmp-{os.getpid()}")
            generate(tmp, camera=getattr(opts, "camera", "front"))
            os.replace(tmp, raw)
        maker = job.policy.sample_weights
        if opts is not None and getattr(opts, "sample_if_missing", False) and maker:
            resolve(maker)(dict(job.spec.weights), list(getattr(opts, "instructions", [])), self.say)

    def _run_steps(self, job: LoadedJob, steps: list[str], executor: Executor, record: RunRecord,
                   image: str, req: RunRequest) -> None:
        runs = job.spec.outputs.runs_dir
        for name in steps:
            step = record.step(name)
            plan = build_plan(job, name, self.machine, run_id=record.run_id, image=image,
                              resume=req.resume and name == "train", executor=executor.name, mode=req.mode,
                              resume_from=req.resume_from if name == "train" else None)
            plan = executor.prepare(job, plan, self.machine.python)
            for w in plan.warnings:
                self.say(f"[yellow]warning: {w}[/]")
            self._start_step(plan, step, executor)
            records.save(record, runs)
            self.say(f"[bold]{name}[/] started ({executor.name}); log: {plan.log_file}")

            def on_start(h: StepHandle, step: StepRecord = step) -> None:
                step.handle = {**step.handle, **h.data}
                records.save(record, runs)

            try:
                outcome = executor.run_step(plan, on_start)
            except RunnerError as e:
                step.status, step.ended = "failed", self.now().isoformat(timespec="seconds")
                step.diagnosis = {"kind": "executor", "cause": str(e), "fix": ""}
                record.status, record.ended = "failed", step.ended
                records.save(record, runs)
                raise
            step.exit_code, step.requeues, step.detail = outcome.exit_code, outcome.requeues, outcome.detail
            step.ended = self.now().isoformat(timespec="seconds")
            stopped = outcome.interrupted or (outcome.exit_code in STOP_CODES and not outcome.oom_killed)
            # Stopped from outside wins over the exit code: a Slurm job cancelled while pending reports 0.
            step.status = "interrupted" if stopped else "succeeded" if outcome.exit_code == 0 else "failed"
            if step.status != "succeeded":
                self._diagnose(job, plan, step, outcome.oom_killed, step.status == "interrupted")
                break
        for s in record.steps:
            if s.status == "pending":
                s.status = "not_run"
        statuses = {s.status for s in record.steps}
        record.status = next((s for s in ("interrupted", "failed") if s in statuses), "succeeded")
        record.ended = self.now().isoformat(timespec="seconds")
        records.save(record, runs)

    def _start_step(self, plan: StepPlan, step: StepRecord, executor: Executor) -> None:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        for m in plan.docker.mounts:
            if not m.read_only:
                Path(m.source).mkdir(parents=True, exist_ok=True)  # outputs: a missing folder is created, as yours
        context = plan.contexts[plan.context_key or executor.context_key]
        context.write(plan.run_dir / f"{plan.step}.context.json")
        step.status, step.executor, step.stop_grace_s = "running", executor.name, plan.stop_grace_s
        step.started = self.now().isoformat(timespec="seconds")
        step.log = str(plan.log_file)
        step.command = executor.recorded_command(plan)

    def _diagnose(self, job: LoadedJob, plan: StepPlan, step: StepRecord, oom: bool, interrupted: bool = False) -> None:
        try:
            tail = tail_text(plan.log_file.read_bytes()[-65536:])
        except OSError:
            tail = ""
        opts = job.step(plan.step)
        nccl = dict((e.name, e.value) for e in plan.docker.env).get("NCCL_SOCKET_IFNAME")
        facts = FailureFacts(step=plan.step, exit_code=step.exit_code or 0, oom_killed=oom, log_tail=tail, job=job.name,
                             interrupted=interrupted,
                             shm_size=plan.docker.shm_size, shm_needed=opts.loader_shm_bytes(),
                             num_workers=opts.num_workers, nccl_ifname=nccl,
                             interfaces=tuple(i.name for i in self.machine.interfaces))
        diagnosis = classify(facts)
        if diagnosis:
            step.diagnosis = diagnosis.as_dict()
            self.say(f"[red]{plan.step} {step.status} (exit {step.exit_code}): {diagnosis.cause}[/]\n"
                     f"  fix: {diagnosis.fix}")
        else:
            self.say(f"[red]{plan.step} {step.status} (exit {step.exit_code})[/]; see {plan.log_file}")


def redact_text(job: LoadedJob) -> str:
    """The job text with literal secret values replaced; `${oc.env:NAME}` references stay as written."""
    text = job.text
    for _, _, value in preflight.literal_secret_values(job):
        text = text.replace(value, "<redacted>")
    return text


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


__all__ = ["Orchestrator", "RunRequest", "RunnerError", "exit_code_of"]
