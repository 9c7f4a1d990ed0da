"""Step running: each step of a prepared run through its executor, recorded as it starts and ends, a failure
diagnosed from its log. The run's record, image and lock come from runner/orchestrate.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from runner import records
from runner.diagnose import FailureFacts, classify, tail_text
from runner.errors import RunnerError
from runner.executors.base import Executor, StepHandle
from runner.plan import Machine, StepPlan, build_plan
from runner.preparation import Say
from runner.records import RunRecord, StepRecord
from runner.spec.load import LoadedJob

if TYPE_CHECKING:
    from runner.orchestrate import RunRequest

#: Exit codes of a step ended by SIGINT / SIGTERM (Ctrl-C, `runner stop`, `docker stop`).
STOP_CODES = (130, 143)


class StepRunner:
    """Runs a run's steps in order until one does not succeed; the record is saved at every change."""

    def __init__(self, executor: Executor, machine: Machine, say: Say, now: Callable[[], datetime]) -> None:
        self.executor, self.machine, self.say, self.now = executor, machine, say, now

    def run(self, job: LoadedJob, steps: list[str], record: RunRecord, image: str, req: RunRequest) -> None:
        executor = self.executor
        runs = job.spec.outputs.runs_dir
        for name in steps:
            step = record.step(name)
            plan = build_plan(job, name, self.machine, run_id=record.run_id, image=image,
                              resume=req.resume and name == "train", executor=executor.name, mode=req.mode,
                              resume_from=req.resume_from if name == "train" else None)
            plan = executor.prepare(job, plan, self.machine.python)
            for w in plan.warnings:
                self.say(f"[yellow]warning: {w}[/]")
            self._start_step(plan, step)
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

    def _start_step(self, plan: StepPlan, step: StepRecord) -> None:
        executor = self.executor
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
                             interfaces=tuple(i.name for i in self.machine.interfaces),
                             gpu_memory_fix=opts.gpu_memory_fix(plan.step))
        diagnosis = classify(facts)
        if diagnosis:
            step.diagnosis = diagnosis.as_dict()
            self.say(f"[red]{plan.step} {step.status} (exit {step.exit_code}): {diagnosis.cause}[/]\n"
                     f"  fix: {diagnosis.fix}")
        else:
            self.say(f"[red]{plan.step} {step.status} (exit {step.exit_code})[/]; see {plan.log_file}")
