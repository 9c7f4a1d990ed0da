"""The local executor end to end: the orchestrator, runner.inside, records and logs, without docker."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runner import records
from runner.orchestrate import Orchestrator, RunRequest, exit_code_of
from runner.spec.load import load_job

REPO = Path(__file__).resolve().parents[3]


def orchestrator(out: io.BytesIO, said: list[str]) -> Orchestrator:
    return Orchestrator(os.environ, said.append, out=out)  # type: ignore[arg-type]


JOB = """\
name: loc
policy: command
executor: local
env: {GREETING: hello, API_TOKEN: t0psecret}
steps:
  first:
    command:
      - sh
      - -c
      - >-
        echo $GREETING from $RUNNER_STEP;
        python3 -c 'import json,os; print(json.load(open(os.environ["RUNNER_CONTEXT"]))["step"])'
  second:
    command: ["sh", "-c", "echo second; exit 4"]
  third:
    command: "echo never"
"""


def test_steps_run_in_order_logs_and_records(write_job: Callable[..., Path]) -> None:
    out, said = io.BytesIO(), []
    job = load_job(write_job(JOB), os.environ)
    rec = orchestrator(out, said).run(RunRequest(job))
    assert [s.status for s in rec.steps] == ["succeeded", "failed", "not_run"]  # the record says what never ran
    assert exit_code_of(rec) == 4 and rec.status == "failed"
    run_dir = job.spec.outputs.runs_dir / "loc" / rec.run_id
    assert (run_dir / "first.log").read_text().startswith("hello from first\nfirst\n")
    assert b"hello from first" in out.getvalue() and b"second" in out.getvalue()
    saved = records.load(run_dir / "run.json")
    assert saved.status == "failed" and saved.steps[1].exit_code == 4
    text = (run_dir / "run.json").read_text() + (run_dir / "first.context.json").read_text()
    assert "t0psecret" not in text  # secrets reach the step's env only
    assert json.loads((run_dir / "first.context.json").read_text())["paths"]["job_dir"] == str(run_dir.parent)
    copy = (job.spec.outputs.runs_dir / "loc" / "job.yaml").read_text()
    assert copy == job.text.replace("t0psecret", "<redacted>")


def test_missing_input_path_refused_before_anything_runs(write_job: Callable[..., Path], tmp_path: Path) -> None:
    from runner.errors import PreflightError

    job = load_job(write_job(JOB + "mounts: [{source: /nonexistent/data, target: /d}]\n"), os.environ)
    with pytest.raises(PreflightError, match=r"mounts\[0\]\.source: /nonexistent/data does not exist"):
        orchestrator(io.BytesIO(), []).run(RunRequest(job))
    assert not (tmp_path / "runs").exists()


def _wait_for(path: Path, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.mark.parametrize("how", ["ctrl-c", "runner-stop"])
def test_stop_records_interrupted_and_leaves_no_process(write_job: Callable[..., Path], tmp_path: Path, how: str) -> None:
    marker = f"rr-test-sleeper-{how}-{os.getpid()}"
    write_job(f"name: sleepy\npolicy: command\nexecutor: local\nsteps:\n  long:\n"
              f"    command: [sh, -c, 'echo started; python3 -c \"import time; time.sleep(120)\" {marker}']\n",
              "sleepy.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", "sleepy"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        logs = list((tmp_path / "runs" / "sleepy").glob("*/long.log"))
        deadline = time.monotonic() + 20
        while not logs and time.monotonic() < deadline:
            time.sleep(0.05)
            logs = list((tmp_path / "runs" / "sleepy").glob("*/long.log"))
        _wait_for(logs[0], "started")
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        else:
            stop = subprocess.run([sys.executable, "-m", "runner.cli", "stop", "sleepy", "--grace", "5"], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=60)
            assert "stopped sleepy/" in stop.stdout, stop.stderr
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    rec = records.load(logs[0].parent / "run.json")
    assert rec.status == "interrupted" and rec.steps[0].status == "interrupted"
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1, "the step outlived its stop"


SLOW_SAVER = """\
import os, pathlib, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
out, rank = pathlib.Path(sys.argv[1]), os.environ["RANK"]
(out / f"started{rank}").write_text("")
while not stop:
    time.sleep(0.05)
time.sleep(float(sys.argv[2]))  # a checkpoint slower than torchrun's own 30 s
(out / f"saved{rank}").write_text("")
sys.exit(143)
"""


@pytest.mark.slow
def test_runner_stop_lets_torchrun_ranks_finish_a_checkpoint_longer_than_torchrun_s_own_wait(
        write_job: Callable[..., Path], tmp_path: Path) -> None:
    """torchrun kills its ranks 30 s after it forwards a SIGTERM unless TORCH_ELASTIC_SHUTDOWN_TIMEOUT says
    otherwise: the runner sets it to the step's stop_grace_s, so a 35 s checkpoint of two ranks completes."""
    (tmp_path / "saver.py").write_text(SLOW_SAVER)
    marks = tmp_path / "marks"
    marks.mkdir()
    write_job(f"name: saver\npolicy: command\nexecutor: local\nsteps:\n  train:\n    stop_grace_s: 75\n"
              f"    command: [{sys.executable}, -m, torch.distributed.run, --standalone, --nproc_per_node, '2', "
              f"{tmp_path / 'saver.py'}, {marks}, '35']\n", "saver.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", None)
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", "saver"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not all((marks / f"started{r}").exists() for r in (0, 1)) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop = subprocess.run([sys.executable, "-m", "runner.cli", "stop", "saver"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert "stopped saver/" in stop.stdout, stop.stderr
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (marks / "saved0").exists() and (marks / "saved1").exists(), err  # neither rank was killed mid-save
    assert proc.returncode == 130, err
    log = next((tmp_path / "runs" / "saver").glob("*/train.log")).read_text()
    assert "forcefully exiting via 9" not in log


def test_killed_runner_loses_no_output_and_logs_follow_to_the_end(write_job: Callable[..., Path], tmp_path: Path) -> None:
    """A lost terminal (the runner killed outright): the step goes on, its log is complete, `logs -f` follows it
    and the record is settled from the exit code the step left behind."""
    write_job("name: orphan\npolicy: command\nexecutor: local\nsteps:\n  s:\n"
              "    command: 'for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.3; done'\n", "orphan.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", "orphan"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not list((tmp_path / "runs" / "orphan").glob("*/s.log")) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = next((tmp_path / "runs" / "orphan").glob("*/s.log"))
    _wait_for(log, "line-1")
    proc.kill()
    proc.wait(10)
    follow = subprocess.run([sys.executable, "-m", "runner.cli", "logs", "orphan", "-f"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert [f"line-{i}" for i in range(1, 7)] == [ln for ln in follow.stdout.splitlines() if ln.startswith("line-")]
    assert "succeeded" in follow.stderr
    assert records.load(log.parent / "run.json").steps[0].status == "succeeded"
