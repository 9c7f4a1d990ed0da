"""Slurm as an executor: run_step = sbatch the rendered script + follow the step's log file until the job ends
(requeues included), stop = scancel, is_alive = squeue. The job id lives in the run record, so `runner ps`,
`runner logs -f`, `runner stop` and `runner history` work for Slurm runs as for local ones."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from runner.errors import RunnerError
from runner.executors.base import ExecutorBase, StepHandle, StepOutcome
from runner.plan import StepPlan
from runner.records import StepRecord
from runner.runs import follow
from runner.slurm import cache_file, node_image, script_path

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


#: Final states that are a failure of the step whatever its exit code says (a TIMEOUT can report 0:0).
FAILED = {"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
#: Final states where the step was stopped from outside: the run is interrupted, resumable.
STOPPED = {"CANCELLED", "PREEMPTED"}


def job_fields(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict; {} when Slurm no longer knows the job."""
    try:
        out = _run(["scontrol", "show", "job", "-o", job_id])
    except SlurmError:
        return {}
    return dict(re.findall(r"(\w+)=(\S+)", out))


def describe(job_id: str, state: str, fields: dict[str, str] | None = None) -> str:
    """'slurm job 12 PENDING (Resources)', 'slurm job 12 RUNNING on node1', ...: what `ps` and the record say."""
    f = job_fields(job_id) if fields is None else fields
    text = f"slurm job {job_id} {state}"
    reason = f.get("Reason", "None")
    if state == "PENDING" and reason != "None":
        text += f" ({reason})"
    elif state == "RUNNING" and f.get("NodeList"):
        text += f" on {f['NodeList']}"
    elif state in FINAL and reason not in ("None", ""):
        text += f" ({reason})"
    return text


def job_state(job_id: str, fields: dict[str, str] | None = None) -> tuple[str, int | None, int]:
    """(state, exit code or None, restart count) from `scontrol show job` (or its `fields`, already read)."""
    fields = job_fields(job_id) if fields is None else fields
    if not fields:
        return "UNKNOWN", None, 0
    code = fields.get("ExitCode", "")
    exit_code = int(code.split(":")[0]) if code[:1].isdigit() else None
    if code.count(":") and exit_code == 0 and code.split(":")[1] not in ("0", ""):
        exit_code = 128 + int(code.split(":")[1])  # killed by a signal
    return fields.get("JobState", "UNKNOWN"), exit_code, int(fields.get("Restarts", "0") or 0)


class SlurmExecutor(ExecutorBase):
    """Submits each step as a batch job; the nodes run it in the job's container runtime (docker by default)."""

    name = "slurm"
    runs_here = False

    def __init__(self, out: BinaryIO | None = None, poll_s: float = 1.0, environ: Any = None) -> None:
        self.out = out or sys.stdout.buffer
        self.poll_s = poll_s

    def image_builder(self, job: Any) -> str | None:
        """The container runtimes run the image built here (shipped through slurm.image_cache); local runs none."""
        return None if job.spec.slurm.runtime == "local" else "docker"

    def prepare(self, job: Any, plan: StepPlan, python: str) -> StepPlan:
        from dataclasses import replace

        from runner.slurm import render_sbatch

        return replace(plan, sbatch=render_sbatch(job, plan, python),
                       context_key="local" if job.spec.slurm.runtime == "local" else "docker")

    def recorded_command(self, plan: StepPlan) -> list[str]:
        return ["sbatch", "--parsable", str(script_path(plan))]

    def image_ready(self, job: Any, builder: Any, tag: str, say: Callable[[str], None]) -> None:
        """Put the image where the nodes get it: pushed to slurm.registry, or made once per content tag into
        slurm.image_cache (docker save; an enroot squashfs for pyxis; a SIF for Apptainer)."""
        slurm = job.spec.slurm
        if slurm.registry:
            push_image(builder.client, tag, node_image(slurm, tag), say)
        elif slurm.image_cache is not None:
            cache_image(builder.client, tag, slurm.image_cache, slurm.runtime, say)

    def run_step(self, plan: StepPlan, on_start: Callable[[StepHandle], None]) -> StepOutcome:
        if plan.sbatch is None:
            msg = "internal: a Slurm step needs its rendered batch script"
            raise SlurmError(msg)
        script = script_path(plan)
        script.write_text(plan.sbatch)
        job_id = _run(["sbatch", "--parsable", str(script)]).strip().split(";")[0]
        self.out.write(f"[runner] submitted slurm job {job_id} ({script})\n".encode())
        on_start(StepHandle({"job_id": job_id}))
        final: dict[str, Any] = {}
        said: set[str] = set()

        def running() -> bool:
            fields = job_fields(job_id)  # one scontrol call a poll, for the state and its description
            state, code, restarts = job_state(job_id, fields)
            if state == "PENDING" and (text := describe(job_id, state, fields)) not in said:
                said.add(text)  # once per reason: why the job waits (nodes down, resources, priority)
                self.out.write(f"[runner] {text}\n".encode())
                self.out.flush()
            if state in FINAL:
                final.update(state=state, code=code, restarts=restarts, detail=describe(job_id, state, fields))
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
        state, code = final["state"], final["code"]
        if state in FAILED and not code:
            code = 1  # a TIMEOUT or NODE_FAIL is a failure even where Slurm reports exit 0
        return StepOutcome(exit_code=code if code is not None else 1, interrupted=state in STOPPED,
                           requeues=final["restarts"], detail=final["detail"],
                           oom_killed=state == "OUT_OF_MEMORY")

    def stop(self, step: StepRecord, grace_s: float) -> bool:
        if not step.handle.get("job_id") or not self.is_alive(step):
            return False
        _run(["scancel", str(step.handle["job_id"])])
        return True

    def is_alive(self, step: StepRecord) -> bool:
        if not step.handle.get("job_id"):
            return False
        job_id = str(step.handle["job_id"])
        fields = job_fields(job_id)
        state, _, _ = job_state(job_id, fields)
        step.detail = describe(job_id, state, fields)
        return state not in FINAL | {"UNKNOWN"}

    def release(self, step: StepRecord) -> None:
        """Slurm ends the job's processes itself."""


def push_image(client: Any, tag: str, ref: str, say: Callable[[str], None]) -> None:
    """Tag the image as `ref` and push it, unless the registry has that content tag already."""
    import docker.errors

    repo, _, version = ref.rpartition(":")
    client.images.get(tag).tag(repo, version)
    try:
        client.images.get_registry_data(ref)
        say(f"image {ref} already in the registry")
        return
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as e:
        if "manifest unknown" not in str(e) and "not found" not in str(e).lower():
            msg = f"cannot reach the registry of {ref} from this machine's Docker engine: {e.explanation or e}"
            raise SlurmError(msg) from e
    say(f"pushing image {ref} for the Slurm nodes")
    for line in client.images.push(repo, version, stream=True, decode=True):
        if "error" in line:
            msg = f"docker push {ref}: {line['error']} (check slurm.registry, and docker login for it on this machine)"
            raise SlurmError(msg)


#: What makes the cache file of a runtime from the image in this machine's Docker engine (TARGET, TAG filled in).
CONVERTERS = {"pyxis": ["enroot", "import", "--output", "TARGET", "dockerd://TAG"],
              "apptainer": ["apptainer", "build", "TARGET", "docker-daemon://TAG"]}


def cache_image(client: Any, tag: str, cache: Path, runtime: str, say: Callable[[str], None]) -> None:
    """Make the runtime's file of the image in `cache` once per content tag, under a temp name then renamed."""
    import os
    import shutil

    target = cache_file(cache, tag, runtime)
    if target.is_file():
        say(f"image {tag} already in {cache}")
        return
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    say(f"saving image {tag} to {target} for the Slurm nodes")
    try:
        if runtime == "docker":
            with open(tmp, "wb") as f:
                for chunk in client.images.get(tag).save(named=True):
                    f.write(chunk)
        else:
            argv = [a.replace("TARGET", str(tmp)).replace("TAG", tag) for a in CONVERTERS[runtime]]
            if shutil.which(argv[0]) is None:
                msg = (f"slurm.runtime {runtime} with slurm.image_cache makes the image's {target.suffix} file here "
                       f"with {argv[0]}, which this machine lacks: install it, or set slurm.registry (the nodes pull)")
                raise SlurmError(msg)
            r = subprocess.run(argv, capture_output=True, text=True, check=False)
            if r.returncode != 0 or not tmp.is_file():
                msg = f"{' '.join(argv)} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}"
                raise SlurmError(msg)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
