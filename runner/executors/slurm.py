"""Slurm as an executor: run_step = sbatch the rendered script + follow the step's log file until the job ends
(requeues included), stop = scancel, is_alive = squeue. The job id lives in the run record, so `runner ps`,
`runner logs -f`, `runner stop` and `runner history` work for Slurm runs as for local ones."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from runner.errors import RunnerError
from runner.executors.base import StepHandle, StepOutcome
from runner.plan import StepPlan
from runner.records import StepRecord
from runner.runs import follow
from runner.slurm import script_path

#: Job states after which nothing more happens (a requeued job goes back to PENDING and is followed on).
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "SPECIAL_EXIT"}


class SlurmError(RunnerError):
    """sbatch/scontrol failed; the message carries Slurm's own words."""


def _run(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as e:
        msg = f"{argv[0]} not found: executor slurm needs the Slurm client commands on this machine"
        raise SlurmError(msg) from e
    if r.returncode != 0:
        msg = f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()}"
        raise SlurmError(msg)
    return r.stdout


def job_state(job_id: str) -> tuple[str, int | None, int]:
    """(state, exit code or None, restart count) from `scontrol show job`."""
    try:
        out = _run(["scontrol", "show", "job", "-o", job_id])
    except SlurmError:
        return "UNKNOWN", None, 0
    fields = dict(re.findall(r"(\w+)=(\S+)", out))
    code = fields.get("ExitCode", "")
    exit_code = int(code.split(":")[0]) if code[:1].isdigit() else None
    if code.count(":") and exit_code == 0 and code.split(":")[1] not in ("0", ""):
        exit_code = 128 + int(code.split(":")[1])  # killed by a signal
    return fields.get("JobState", "UNKNOWN"), exit_code, int(fields.get("Restarts", "0") or 0)


class SlurmExecutor:
    name = "slurm"

    def __init__(self, out: BinaryIO | None = None, poll_s: float = 1.0) -> None:
        self.out = out or sys.stdout.buffer
        self.poll_s = poll_s

    def run_step(self, plan: StepPlan, on_start: Callable[[StepHandle], None]) -> StepOutcome:
        if plan.sbatch is None:
            msg = "internal: a Slurm step needs its rendered batch script"
            raise SlurmError(msg)
        script = script_path(plan)
        script.write_text(plan.sbatch)
        job_id = _run(["sbatch", "--parsable", str(script)]).strip().split(";")[0]
        self.out.write(f"[runner] submitted slurm job {job_id} ({script})\n".encode())
        on_start(StepHandle(extra={"slurm_job_id": job_id}))
        final: dict[str, Any] = {}

        def running() -> bool:
            state, code, restarts = job_state(job_id)
            if state in FINAL:
                final.update(state=state, code=code, restarts=restarts)
                return False
            return True

        try:
            # The step's log is appended to by every (re)start of the job: followed like `runner logs -f`.
            for chunk in follow(plan.log_file, running, self.poll_s):
                self.out.write(chunk)
                self.out.flush()
        except KeyboardInterrupt:
            _run(["scancel", job_id])  # SIGTERM to the step: training checkpoints before it goes
            self.out.write(f"[runner] cancelled slurm job {job_id}\n".encode())
            return StepOutcome(exit_code=130, interrupted=True)
        return StepOutcome(exit_code=final["code"] if final["code"] is not None else 1,
                           interrupted=final["state"] in ("CANCELLED", "PREEMPTED"), requeues=final["restarts"])

    def stop(self, step: StepRecord, grace_s: float) -> bool:
        if not step.slurm_job_id or not self.is_alive(step):
            return False
        _run(["scancel", step.slurm_job_id])
        return True

    def is_alive(self, step: StepRecord) -> bool:
        if not step.slurm_job_id:
            return False
        return job_state(step.slurm_job_id)[0] not in FINAL | {"UNKNOWN"}
