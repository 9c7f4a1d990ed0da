import dataclasses
import json
import multiprocessing
from datetime import datetime
from pathlib import Path

import pytest

from runner import records
from runner.errors import LockError, RecordError
from runner.records import JobLock, RunRecord, StepRecord


def make(run_id: str = "r1") -> RunRecord:
    return RunRecord(job="j", run_id=run_id, policy="dp3", job_file="jobs/j.yaml", spec_as_written="name: j\n",
                     spec_resolved={"name": "j"}, host="h", git={}, executor="local",
                     steps=[StepRecord("train", status="succeeded", exit_code=0)])


def test_round_trip_and_listing(tmp_path: Path) -> None:
    for rid in ("20261127-120001-bbbb", "20261127-120000-aaaa"):
        records.save(make(rid), tmp_path)
    paths = records.list_runs(tmp_path, "j")
    assert [p.parent.name for p in paths] == ["20261127-120000-aaaa", "20261127-120001-bbbb"]
    back = records.load(paths[0])
    assert back == make("20261127-120000-aaaa")
    assert back.step("train").exit_code == 0


def test_atomic_write_leaves_no_temp_and_bad_records_are_clear(tmp_path: Path) -> None:
    p = tmp_path / "a" / "x.json"
    records.write_json_atomic(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]
    p.write_text("{half")
    with pytest.raises(RecordError, match="unreadable"):
        records.load(p)
    with pytest.raises(RecordError, match="no such run record"):
        records.load(tmp_path / "none.json")


def test_run_ids_sort_by_time() -> None:
    a = records.new_run_id(datetime(2026, 1, 2, 3, 4, 5), "ffff")
    b = records.new_run_id(datetime(2026, 1, 2, 3, 4, 6), "0000")
    assert a == "20260102-030405-ffff" and a < b


def _hold(path: str, ready: "multiprocessing.synchronize.Event", done: "multiprocessing.synchronize.Event") -> None:
    lock = JobLock(Path(path), "j")
    lock.acquire({"run": "first", "pid": 1})
    ready.set()
    done.wait(10)
    lock.release()


def test_second_run_of_a_job_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path), ready, done))
    proc.start()
    assert ready.wait(10)
    try:
        with pytest.raises(LockError, match="job j is already running \\(run=first pid=1\\)"):
            JobLock(tmp_path, "j").acquire({"run": "second"})
    finally:
        done.set()
        proc.join(10)
    JobLock(tmp_path, "j").acquire({"run": "third"})  # free again once the holder is gone


def test_schema_1_records_are_read_with_their_executor_fields_as_the_handle(tmp_path: Path) -> None:
    """Runs recorded before the opaque handle (schema 1) still show, stop and resume."""
    data = dataclasses.asdict(make())
    step = {k: v for k, v in data["steps"][0].items() if k != "handle"}
    data.update(schema_version=1, steps=[
        {**step, "name": "convert", "container_id": "c0ffee", "pid": None, "slurm_job_id": None},
        {**step, "name": "train", "container_id": None, "pid": 4242, "slurm_job_id": None},
        {**step, "name": "eval", "container_id": None, "pid": None, "slurm_job_id": "17"}])
    path = tmp_path / "j" / "r1" / records.RECORD
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    rec = records.load(path)
    assert [s.handle for s in rec.steps] == [{"container_id": "c0ffee"}, {"pid": 4242}, {"job_id": "17"}]
    records.save(rec, tmp_path)
    again = json.loads(path.read_text())
    assert again["schema_version"] == records.SCHEMA_VERSION == 2 and "pid" not in again["steps"][1]
    assert records.load(path) == rec


def test_a_record_from_a_newer_runner_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / records.RECORD
    path.write_text(json.dumps({**dataclasses.asdict(make()), "schema_version": 3}))
    with pytest.raises(RecordError, match=r"record schema 3 is not 2 \(or 1\); a newer runner wrote it"):
        records.load(path)
