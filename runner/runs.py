"""Runs after the fact: find a run, reconcile a stale 'running' with its executor, follow a log, and the logic of
`runner ps / history / logs / stop / rm / gc` (runner/cli.py only parses and prints)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from policies.curves import read_metrics, series
from runner import records
from runner.errors import BadRunRefError, LockError, RecordError, RunActiveError
from runner.inside import exit_file
from runner.records import JobLock, RunRecord

ACTIVE = ("running", "pending")


#: What a job or run name on the command line may be: it names a folder inside the runs folder, nothing else.
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def find_runs(runs_dir: Path, ref: str | None) -> list[Path]:
    """Records of job `ref`, or the single run whose id is `ref`, or all runs; oldest first."""
    if ref is None:
        return records.list_runs(runs_dir)
    if not _REF.match(ref) or ".." in ref:
        raise BadRunRefError(runs_dir, f"{ref!r} is not a job or run name (letters, digits, '_', '.', '-'); runs are "
                                    "looked up inside the runs folder only")
    by_job = records.list_runs(runs_dir, ref)
    if by_job:
        return by_job
    hits = sorted(runs_dir.glob(f"*/{ref}/{records.RECORD}")) if runs_dir.is_dir() else []
    if hits:
        return hits
    raise RecordError(runs_dir / ref, f"no job or run id {ref!r} under {runs_dir}")


Release = Callable[[records.StepRecord], None]


def reconcile(path: Path, alive: Callable[[records.StepRecord], bool], release: Release | None = None) -> RunRecord:
    """A record whose runner died shows 'running' forever; settle it from the step's exit file, mark the steps
    that never ran, and release what the dead runner left (an exited container).

    Only when no runner holds the job's lock: a live runner owns its record. `alive` may refresh a step's
    `detail` (Slurm's state and reason) as it looks.
    """
    rec = records.load(path)
    if rec.status not in ACTIVE:
        return rec
    lock = JobLock(path.parent.parent, rec.job)
    try:
        lock.acquire({"reconcile": rec.run_id})
    except LockError:
        if lock.holder().get("run") in (rec.run_id, None):
            for step in rec.steps:  # the live runner owns the record; only the executor's detail is looked at
                if step.status == "running":
                    alive(step)
            return rec
        # Another run of the job holds the lock, so this run's runner is gone: settle it without the lock (the
        # live runner never writes this record).
        return _settle(rec, path, alive, release)
    try:
        return _settle(rec, path, alive, release)
    finally:
        lock.release()


def _settle(rec: RunRecord, path: Path, alive: Callable[[records.StepRecord], bool], release: Release | None
            ) -> RunRecord:
    changed = False
    for step in rec.steps:
        if step.status != "running" or alive(step):
            continue
        code = _exit_code(path, step)
        step.exit_code = code
        step.status = "lost" if code is None else ("succeeded" if code == 0 else "failed")
        step.ended = step.ended or _exit_time(path, step)
        if release is not None:
            release(step)
        changed = True
    if changed or not any(s.status == "running" for s in rec.steps):
        states = {s.status for s in rec.steps}
        rec.status = next((s for s in ("running", "failed", "lost", "interrupted") if s in states),
                          "incomplete" if "pending" in states else "succeeded")
        for s in rec.steps:  # the runner died before it got to these
            if s.status == "pending":
                s.status = "not_run"
        rec.ended = rec.ended or max((s.ended for s in rec.steps if s.ended), default=None)
        records.write_json_atomic(path, asdict(rec))  # where it was read: a record never names where it goes
    return rec


def _exit_time(path: Path, step: records.StepRecord) -> str | None:
    log = records.step_log(path, step)
    try:
        ended = float(json.loads(exit_file(log).read_text())["ended"]) if log else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return datetime.fromtimestamp(ended).isoformat(timespec="seconds") if ended else None


def _exit_code(path: Path, step: records.StepRecord) -> int | None:
    log = records.step_log(path, step)
    if log is None:
        return None
    try:
        data = json.loads(exit_file(log).read_text())
        return int(data["exit_code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_all(paths: list[Path], alive: Callable[[records.StepRecord], bool],
             warn: Callable[[str], None], release: Release | None = None) -> list[RunRecord]:
    """Reconciled records; one that cannot be read is reported through `warn` and skipped, not fatal."""
    out = []
    for p in paths:
        try:
            out.append(reconcile(p, alive, release))
        except RecordError as e:
            warn(f"warning: skipping {e}")
    return out


def follow(path: Path, still_running: Callable[[], bool], poll_s: float = 0.25) -> Iterator[bytes]:
    """Yield the file's content, then what is appended, until the writer is done and the file drained."""
    while not path.exists():
        if not still_running():
            return
        time.sleep(poll_s)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                yield chunk
                continue
            if not still_running():
                rest = f.read()
                if rest:
                    yield rest
                return
            time.sleep(poll_s)


def duration(rec: RunRecord, now: datetime) -> str:
    """How long the run took (or has taken so far): '1h02m', '3m07s', '12s'."""
    try:
        start = datetime.fromisoformat(rec.started or "")
        end = datetime.fromisoformat(rec.ended) if rec.ended else now
    except ValueError:
        return "-"
    secs = max(0, int((end - start.replace(tzinfo=end.tzinfo)).total_seconds()))
    h, m, s = secs // 3600, secs % 3600 // 60, secs % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def key_metric(path: Path) -> str:
    """The run's headline number: eval joint MSE when it has one, else the last training loss; '-' otherwise."""
    folder = path.parent
    try:
        summary = json.loads((folder / "eval" / "eval.json").read_text())
        return f"eval mse {float(summary['mse_joints']):.4g}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    steps, loss = series(read_metrics(folder / "metrics.jsonl"), "loss")
    return f"loss {loss[-1]:.4g} @{steps[-1]}" if steps else "-"


def row(rec: RunRecord, path: Path, now: datetime) -> dict[str, str]:
    """One line of `runner ps` / `runner history`: what a user scans for."""
    active = next((s for s in rec.steps if s.status in ("running", "pending") and rec.status in ACTIVE), None)
    step = active or next((s for s in reversed(rec.steps) if s.status not in ("pending", "not_run")), None)
    never = [s.name for s in rec.steps if s.status == "not_run"]
    status = rec.status + (" (resumed)" if rec.resume else "")
    detail = (step.detail or "") if step else ""
    if never:
        detail = (detail + "; " if detail else "") + "never ran: " + ", ".join(never)
    return {"JOB": rec.job, "RUN": rec.run_id, "STATUS": status, "STEP": step.name if step else "-",
            "EXECUTOR": rec.executor, "DURATION": duration(rec, now), "METRIC": key_metric(path), "DETAIL": detail}


def compare_row(rec: RunRecord, path: Path, now: datetime) -> dict[str, str]:
    """One column set of `runner compare`: where the run got to and how good it was."""
    rows = read_metrics(path.parent / "metrics.jsonl")
    steps, loss = series(rows, "loss")
    _, val = series(rows, "val_loss")
    try:
        mse = f"{float(json.loads((path.parent / 'eval' / 'eval.json').read_text())['mse_joints']):.4g}"
    except (OSError, ValueError, KeyError, TypeError):
        mse = "-"
    overrides = " ".join(rec.overrides) or "-"
    return {"RUN": rec.run_id, "JOB": rec.job, "STATUS": rec.status + (" (resumed)" if rec.resume else ""),
            "DURATION": duration(rec, now), "STEPS": str(steps[-1]) if steps else "-",
            "LAST LOSS": f"{loss[-1]:.4g}" if loss else "-", "BEST VAL": f"{min(val):.4g}" if val else "-",
            "EVAL MSE": mse, "OVERRIDES": overrides}


def table(rows: list[dict[str, str]], columns: list[str]) -> list[str]:
    """Left-aligned columns under a header; the last column is not padded."""
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns[:-1]}
    lines = []
    for r in [{c: c for c in columns}, *rows]:
        lines.append("  ".join([*(r[c].ljust(widths[c]) for c in columns[:-1]), r[columns[-1]]]).rstrip())
    return lines


class StepControl:
    """The executor of each recorded step (one made per kind: the docker one holds a client), to ask whether the
    step is alive, stop it, or release what it left behind. `make`: runner.executors.make_executor by default."""

    def __init__(self, make: Callable[[str], Any] | None = None) -> None:
        self._make = make
        self._made: dict[str, Any] = {}

    def executor(self, step: records.StepRecord) -> Any:
        name = step.executor or "local"
        if name not in self._made:
            if self._make is None:
                from runner.executors import make_executor

                self._made[name] = make_executor(name)
            else:
                self._made[name] = self._make(name)
        return self._made[name]

    def alive(self, step: records.StepRecord) -> bool:
        return bool(self.executor(step).is_alive(step))

    def release(self, step: records.StepRecord) -> None:
        self.executor(step).release(step)

    def stop(self, step: records.StepRecord, grace_s: float) -> bool:
        return bool(self.executor(step).stop(step, grace_s))


def record_path(runs_dir: Path, rec: RunRecord) -> Path:
    return runs_dir / rec.job / rec.run_id / records.RECORD


def ps_rows(runs_dir: Path, everything: bool, control: StepControl, warn: Callable[[str], None],
            now: datetime) -> list[dict[str, str]]:
    """`runner ps`: the runs in progress (every run with `everything`), reconciled with their executors."""
    recs = load_all(find_runs(runs_dir, None), control.alive, warn, control.release)
    return [row(r, record_path(runs_dir, r), now) for r in recs if everything or r.status in ACTIVE]


def history_rows(runs_dir: Path, job: str, control: StepControl, warn: Callable[[str], None],
                 now: datetime) -> list[dict[str, str]]:
    """`runner history JOB`: every run of the job with its steps' outcomes and the code it ran."""
    rows = []
    for r in load_all(find_runs(runs_dir, job), control.alive, warn, control.release):
        cells = row(r, record_path(runs_dir, r), now)
        cells["STEPS"] = " ".join(f"{s.name}:{s.status}" + (f"({s.exit_code})" if s.exit_code else "") for s in r.steps)
        cells["STARTED"] = r.started or "-"
        cells["COMMIT"] = (r.git.get("commit", "")[:8] + ("+dirty" if r.git.get("dirty") else "")) if r.git else "-"
        rows.append(cells)
    return rows


def stop_runs(runs_dir: Path, ref: str, grace_s: float | None, control: StepControl,
              warn: Callable[[str], None]) -> list[str]:
    """Stop every running step of `ref` (a job or a run id), each with its own stop_grace_s unless `grace_s`;
    returns "job/run step name" for each stopped step."""
    from runner.layout import STOP_GRACE_S

    stopped = []
    for rec in load_all(find_runs(runs_dir, ref), control.alive, warn):
        if rec.status not in ACTIVE:
            continue
        for s in rec.steps:
            grace = grace_s if grace_s is not None else (s.stop_grace_s or STOP_GRACE_S)
            if s.status == "running" and control.stop(s, grace):
                stopped.append(f"{rec.job}/{rec.run_id} step {s.name}")
    return stopped


def log_record(runs_dir: Path, ref: str, step: str | None) -> Path:
    """The record whose logs `runner logs REF [STEP]` shows: the newest run of REF (with STEP, the newest that
    ran it: a later run may not have)."""
    paths = find_runs(runs_dir, ref)
    if step:
        return next((p for p in reversed(paths) if _has_step_log(p, step)), paths[-1])
    return paths[-1]


def _has_step_log(path: Path, step: str) -> bool:
    try:
        return any(s.name == step and records.step_log(path, s) is not None for s in records.load(path).steps)
    except RecordError:
        return False


def rm_targets(runs_dir: Path, run: str, checkpoints: bool, control: StepControl,
               warn: Callable[[str], None]) -> tuple[list[Path], Path | None]:
    """What `runner rm RUN` removes: the run's folder, and with `checkpoints` the lineage it started; the lineage
    kept otherwise is returned second. A run that is not finished is refused."""
    paths = [p for p in find_runs(runs_dir, run) if p.parent.name == run]
    if not paths:
        raise BadRunRefError(runs_dir / run, f"{run} is not a run id (see `runner history JOB`)")
    recs = load_all(paths, control.alive, warn, control.release)
    if recs and recs[0].status in ACTIVE:
        raise RunActiveError(paths[0], f"run {run} is {recs[0].status}; stop it first (`runner stop {run}`)")
    lineage = paths[0].parent.parent / "checkpoints" / run
    if not lineage.is_dir():
        return [paths[0].parent], None
    return ([paths[0].parent, lineage], None) if checkpoints else ([paths[0].parent], lineage)


def compile_caches(runs_dir: Path, job: str | None, control: StepControl,
                   warn: Callable[[str], None]) -> tuple[list[Path], list[Path]]:
    """The jobs' torch.compile caches (runs/<job>/.compile-cache): (those no running step uses, those in use)."""
    from runner.layout import COMPILE_CACHE

    jobs = [runs_dir / job] if job else sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    free: list[Path] = []
    busy: list[Path] = []
    for job_dir in jobs:
        cache = job_dir / COMPILE_CACHE
        if not cache.is_dir():
            continue
        paths = records.list_runs(runs_dir, job_dir.name)
        running = any(r.status in ACTIVE for r in load_all(paths, control.alive, warn, control.release))
        (busy if running else free).append(cache)
    return free, busy


def gc_targets(runs_dir: Path, job: str | None, keep: int, control: StepControl,
               warn: Callable[[str], None]) -> list[Path]:
    """What `runner gc` removes: each job's finished runs older than its newest `keep`, their lineages, and
    checkpoint folders set aside by a resume (superseded-*)."""
    by_job: dict[Path, list[Path]] = {}
    for p in find_runs(runs_dir, job):
        by_job.setdefault(p.parent.parent, []).append(p)
    targets: list[Path] = []
    for job_dir, paths in by_job.items():
        old = paths[: max(0, len(paths) - keep)]
        finished = {r.run_id for r in load_all(old, control.alive, warn, control.release) if r.status not in ACTIVE}
        for p in old:
            if p.parent.name in finished:
                targets.append(p.parent)
                if (job_dir / "checkpoints" / p.parent.name).is_dir():
                    targets.append(job_dir / "checkpoints" / p.parent.name)
        targets += sorted((job_dir / "checkpoints").glob("superseded-*"))
    return targets
