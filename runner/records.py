"""Run records: runs/<job>/<run_id>/run.json, written atomically; run ids; the per-job lock."""

from __future__ import annotations

import fcntl
import json
import re
import secrets
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, TextIO

from runner.atomic import write_text_atomic
from runner.errors import LockError, RecordError

SCHEMA_VERSION = 2
#: Schema 1 kept each executor's handle in its own field; they are read into `handle` (schema 2).
_V1_HANDLE_FIELDS = ("container_id", "pid", "slurm_job_id")
RECORD = "run.json"
#: Step and run states. "running" is only trusted while its process or container is alive (see reconcile).
#: "incomplete": the runner died before every step ran (the pipeline's later steps are still "pending");
#: "lost": a step whose runner died and left no exit code.
#: "not_run": a step the pipeline never got to (an earlier step failed, or the runner died).
# "not_implemented": written by runners before every step had landed; still read.
STATES = ("pending", "running", "succeeded", "failed", "interrupted", "not_implemented", "lost", "incomplete", "not_run")


def new_run_id(now: datetime, token: str | None = None) -> str:
    """Sortable and unique: 20261127-134501-3f9a."""
    return now.strftime("%Y%m%d-%H%M%S") + "-" + (token or secrets.token_hex(2))


@dataclass
class StepRecord:
    name: str
    status: str = "pending"
    exit_code: int | None = None
    started: str | None = None
    ended: str | None = None
    executor: str | None = None
    # What the executor needs to find the step again (stop, is_alive, release): its own keys, opaque to everything
    # else (docker: container_id, local: pid, slurm: job_id).
    handle: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    log: str | None = None
    diagnosis: dict[str, str] | None = None
    requeues: int = 0  # Slurm requeues after preemption / time limit
    stop_grace_s: float | None = None  # what `runner stop` waits before SIGKILL (the step's stop_grace_s)
    detail: str | None = None  # what the executor says beyond the status, e.g. Slurm's "PENDING (Resources)"


@dataclass
class RunRecord:
    job: str
    run_id: str
    policy: str
    job_file: str
    spec_as_written: str
    spec_resolved: dict[str, Any]
    host: str
    git: dict[str, Any]
    executor: str
    image: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"
    started: str | None = None
    ended: str | None = None
    resume: bool = False
    overrides: list[str] = field(default_factory=list)  # `key=value` arguments applied over the job file
    steps: list[StepRecord] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def step(self, name: str) -> StepRecord:
        for s in self.steps:
            if s.name == name:
                return s
        rec = StepRecord(name)
        self.steps.append(rec)
        return rec


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside `path`, fsync, then rename over it: readers never see half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n", fsync=True)


def save(record: RunRecord, runs_dir: Path) -> Path:
    path = runs_dir / record.job / record.run_id / RECORD
    write_json_atomic(path, asdict(record))
    return path


def load(path: Path) -> RunRecord:
    """Read a run record; anything that is not one (random bytes, `[1,2]`, wrong field types) is a RecordError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise RecordError(path, "no such run record") from e
    except (OSError, ValueError) as e:
        raise RecordError(path, f"unreadable run record ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise RecordError(path, f"not a run record: a JSON {type(data).__name__}, not an object")
    version = data.get("schema_version")
    if version not in (1, SCHEMA_VERSION):
        raise RecordError(path, f"record schema {version!r} is not {SCHEMA_VERSION} (or 1); a newer runner wrote it")
    steps = data.pop("steps", [])
    if not isinstance(steps, list) or not all(isinstance(x, dict) for x in steps):
        raise RecordError(path, "not a run record: 'steps' is not a list of objects")
    if version == 1:
        data["schema_version"] = SCHEMA_VERSION  # saved as 2 from here on
        steps = [_v1_step(x) for x in steps]
    try:
        return RunRecord(**_typed(RunRecord, data), steps=[StepRecord(**_typed(StepRecord, x)) for x in steps])
    except (TypeError, ValueError) as e:
        raise RecordError(path, f"not a run record: {e}") from e


def _v1_step(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 step: its executor's own field becomes the handle (the key the executor reads)."""
    out = {k: v for k, v in data.items() if k not in _V1_HANDLE_FIELDS}
    handle = {"job_id" if k == "slurm_job_id" else k: data[k] for k in _V1_HANDLE_FIELDS if data.get(k) is not None}
    out["handle"] = handle
    return out


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list": (list,), "dict": (dict,)}


def _typed(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` if every known field has its declared JSON type (None where the field is optional)."""
    for f in fields(cls):
        if f.name not in data or f.name == "steps":
            continue
        decl = str(f.type)
        value = data[f.name]
        if value is None and "None" in decl:
            continue
        bases = [part.strip().split("[", 1)[0] for part in decl.split("|")]
        allowed = tuple(t for base in bases for t in _JSON_TYPES.get(base, ()))
        if allowed and (not isinstance(value, allowed) or (bool not in allowed and isinstance(value, bool))):
            msg = f"field {f.name!r} is {type(value).__name__}, expected {decl}"
            raise ValueError(msg)
    return data


#: A step's log is `<step>.log` in its run folder; a record only names it (a crafted path cannot point elsewhere).
_LOG_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}\.log$")


def step_log(record_path: Path, step: StepRecord) -> Path | None:
    """The step's log file inside the record's own run folder, or None when the record names no valid one."""
    if not step.log:
        return None
    name = PurePath(step.log).name
    return record_path.parent / name if _LOG_NAME.match(name) else None


def list_runs(runs_dir: Path, job: str | None = None) -> list[Path]:
    """Record paths, oldest first (run ids sort by time)."""
    if not runs_dir.is_dir():
        return []
    jobs = [runs_dir / job] if job else sorted(p for p in runs_dir.iterdir() if p.is_dir())
    out: list[Path] = []
    for j in jobs:
        if j.is_dir():
            out += sorted(j.glob(f"*/{RECORD}"), key=lambda p: p.parent.name)
    return out


class JobLock:
    """An exclusive flock on runs/<job>/.lock for the whole run; released when the process exits, even by SIGKILL."""

    def __init__(self, job_dir: Path, job: str) -> None:
        self.path = job_dir / ".lock"
        self.job = job
        self._f: TextIO | None = None

    def acquire(self, holder: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip() or "another process"
            f.close()
            msg = (f"job {self.job} is already running ({who}). Two runs of one job would overwrite each "
                   f"other's checkpoints: wait for it, or stop it with `runner stop {self.job}`.")
            raise LockError(msg) from None
        f.seek(0)
        f.truncate()
        f.write(" ".join(f"{k}={v}" for k, v in holder.items()))
        f.flush()
        self._f = f

    def holder(self) -> dict[str, str]:
        """What the lock file says of its holder (run=..., pid=..., host=...); {} when free or unreadable."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return {}
        return dict(part.split("=", 1) for part in text.split() if "=" in part)

    def release(self) -> None:
        if self._f is not None:
            self._f.seek(0)
            self._f.truncate()
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            self._f.close()
            self._f = None

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
