"""Run records and names from the command line: a crafted or broken record never reaches outside the runs folder,
never kills a process that is not the step's, and never hides the other runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from runner.executors.local import LocalExecutor, is_step_process
from runner.records import StepRecord
from tests.hostile.conftest import run_cli

JOB = "name: h\npolicy: command\nexecutor: local\nsecret_env: [LAB_SIGNING]\n" \
      "env: {GITHUB_PAT: ghp_abc123secret, LAB_SIGNING: lab-777secret}\nsteps: {s: {command: 'echo logged-line'}}\n"


def _one_run(write_job: Callable[..., Path], tmp_path: Path) -> Path:
    write_job(JOB, "h.yaml")
    r = run_cli("run", "h", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    (record,) = (tmp_path / "runs" / "h").glob("*/run.json")
    return record


def test_secrets_never_reach_records_or_logs(write_job: Callable[..., Path], tmp_path: Path) -> None:
    _one_run(write_job, tmp_path)
    for f in (tmp_path / "runs").rglob("*"):
        if f.is_file():
            text = f.read_text(errors="replace")
            assert "ghp_abc123secret" not in text and "lab-777secret" not in text, f


def test_logs_and_ps_stay_inside_the_runs_folder(write_job: Callable[..., Path], tmp_path: Path) -> None:
    record = _one_run(write_job, tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("private-content\n")
    data = json.loads(record.read_text())
    data["steps"][0]["log"] = str(outside)  # a crafted record pointing its log elsewhere
    record.write_text(json.dumps(data))
    for ref in ("../../outside.txt", "..", "../runs/h", "/etc/passwd", "h/../../x"):
        r = run_cli("logs", ref, cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr and "private-content" not in r.stdout, (ref, r.stderr)
        assert "not a job or run name" in r.stderr
    r = run_cli("logs", "h", cwd=tmp_path)
    assert "private-content" not in r.stdout


def test_a_bad_record_is_skipped_and_named_not_fatal(write_job: Callable[..., Path], tmp_path: Path) -> None:
    record = _one_run(write_job, tmp_path)
    for i, junk in enumerate((os.urandom(256), b"[1, 2]", b'{"schema_version": 1, "job": {"x": 1}}')):
        bad = tmp_path / "runs" / "h" / f"20000101-00000{i}-dead" / "run.json"
        bad.parent.mkdir(parents=True)
        bad.write_bytes(junk)
        for verb in (("ps", "--all"), ("history", "h")):
            r = run_cli(*verb, cwd=tmp_path)
            assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
            assert f"skipping {bad}" in r.stderr
            assert record.parent.name in r.stdout  # the good run is still listed
    r = run_cli("logs", "20000101-000001-dead", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "not a run record" in r.stderr


def test_a_dead_or_foreign_pid_is_not_the_step(tmp_path: Path) -> None:
    # A crafted record naming this test's own pid: `runner stop` must not kill it, ps must not call it running.
    me = StepRecord("s", status="running", handle={"pid": os.getpid()}, log=str(tmp_path / "s.log"), executor="local")
    assert not LocalExecutor().is_alive(me)
    assert not LocalExecutor().stop(me, 0.1)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "runner.inside", "--log",
                             str(tmp_path / "s.log")], start_new_session=True)
    try:
        deadline = time.monotonic() + 10  # until the child has exec'd
        while not is_step_process(proc.pid, str(tmp_path / "s.log")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert is_step_process(proc.pid, str(tmp_path / "s.log"))
        assert not is_step_process(proc.pid, str(tmp_path / "other.log"))
    finally:
        proc.kill()
        proc.wait()


def test_a_dead_run_is_settled_while_another_run_holds_the_lock(write_job: Callable[..., Path], tmp_path: Path) -> None:
    import fcntl

    record = _one_run(write_job, tmp_path)
    data = json.loads(record.read_text())
    data["status"] = "running"
    data["steps"][0].update(status="running", handle={"pid": 2**22 + 12345})  # no such process
    record.write_text(json.dumps(data))
    lock = tmp_path / "runs" / "h" / ".lock"
    with open(lock, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write(f"run=20990101-000000-live pid={os.getpid()} host=x")
        f.flush()
        r = run_cli("ps", "--all", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if record.parent.name in ln)
    assert "running" not in line and "succeeded" in line  # its exit file says 0
