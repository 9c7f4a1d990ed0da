"""Looking at runs after the fact: find a run, reconcile a stale 'running', follow a log."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from runner import records
from runner.errors import RecordError
from runner.inside import exit_file
from runner.records import JobLock, RunRecord

ACTIVE = ("running", "pending")


def find_runs(runs_dir: Path, ref: str | None) -> list[Path]:
    """Records of job `ref`, or the single run whose id is `ref`, or all runs; oldest first."""
    if ref is None:
        return records.list_runs(runs_dir)
    by_job = records.list_runs(runs_dir, ref)
    if by_job:
        return by_job
    hits = sorted(runs_dir.glob(f"*/{ref}/{records.RECORD}")) if runs_dir.is_dir() else []
    if hits:
        return hits
    raise RecordError(runs_dir / ref, f"no job or run id {ref!r} under {runs_dir}")


def reconcile(path: Path, alive: Callable[[records.StepRecord], bool]) -> RunRecord:
    """A record whose runner died shows 'running' forever; settle it from the step's exit file.

    Only when no runner holds the job's lock: a live runner owns its record.
    """
    rec = records.load(path)
    if rec.status not in ACTIVE:
        return rec
    lock = JobLock(path.parent.parent, rec.job)
    try:
        lock.acquire({"reconcile": rec.run_id})
    except Exception:  # noqa: BLE001 - held by the live runner: its record is authoritative
        return rec
    try:
        changed = False
        for step in rec.steps:
            if step.status != "running" or alive(step):
                continue
            code = _exit_code(step)
            step.exit_code = code
            step.status = "lost" if code is None else ("succeeded" if code == 0 else "failed")
            changed = True
        if changed or not any(s.status == "running" for s in rec.steps):
            states = {s.status for s in rec.steps}
            rec.status = next((s for s in ("running", "failed", "lost", "interrupted") if s in states), "succeeded")
            records.save(rec, path.parent.parent.parent)
    finally:
        lock.release()
    return rec


def _exit_code(step: records.StepRecord) -> int | None:
    if not step.log:
        return None
    try:
        data = json.loads(exit_file(Path(step.log)).read_text())
        return int(data["exit_code"])
    except (OSError, ValueError, KeyError):
        return None


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
