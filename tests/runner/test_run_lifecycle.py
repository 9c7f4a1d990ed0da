"""A run's record tells the truth: Ctrl-C under the local executor, a runner killed mid-pipeline (local and
docker), a detached pipeline, a Slurm job stopped while still pending."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(check: Callable[[], bool], timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def job(cwd: Path, text: str, name: str) -> None:
    (cwd / "jobs").mkdir(exist_ok=True)
    (cwd / "jobs" / f"{name}.yaml").write_text(textwrap.dedent(text))


def records(cwd: Path, name: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(p.read_text()) for p in sorted((cwd / "runs" / name).glob("*/run.json"))]


def log_has(cwd: Path, name: str, step: str, text: str) -> bool:
    return any(text in p.read_text(errors="replace") for p in (cwd / "runs" / name).glob(f"*/{step}.log"))


@pytest.mark.slow
def test_ctrl_c_under_the_local_executor_is_an_interrupt_with_the_exact_resume_command(tmp_path: Path) -> None:
    spec = yaml.safe_load((REPO / "jobs" / "sample_dp3.yaml").read_text())
    spec["steps"]["train"].update(epochs=400)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "sample_dp3.yaml").write_text(yaml.safe_dump(spec))
    assert cli("convert", "sample_dp3", "--executor", "local", cwd=tmp_path).returncode == 0
    proc = start("train", "sample_dp3", "--executor", "local", cwd=tmp_path)
    wait_for(lambda: log_has(tmp_path, "sample_dp3", "train", "train: step 20/"), what="training")
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to the runner
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    (rec,) = [r for r in records(tmp_path, "sample_dp3") if r["steps"][0]["name"] == "train"]
    step = rec["steps"][0]
    assert rec["status"] == "interrupted" and step["status"] == "interrupted", rec
    assert step["diagnosis"]["kind"] == "interrupted" and "host memory" not in json.dumps(step)
    assert "runner resume sample_dp3" in step["diagnosis"]["fix"]
    assert "last checkpoint written" in step["diagnosis"]["cause"] and "step-" in step["diagnosis"]["cause"]
    assert list((tmp_path / "runs/sample_dp3/checkpoints").glob("*/step-*.ckpt"))  # the checkpoint exists


def kill_runner_mid_pipeline(cwd: Path, name: str, executor: str) -> None:
    """A two-step pipeline whose runner is SIGKILLed (a closed terminal, a dropped SSH connection) during step a."""
    job(cwd, f"name: {name}\npolicy: command\nexecutor: {executor}\nsteps:\n"
             '  a: {command: "echo a-started; sleep 4; echo a-done"}\n  b: {command: "echo b-ran"}\n', name)
    proc = start("run", name, cwd=cwd)
    wait_for(lambda: log_has(cwd, name, "a", "a-started"), what="step a")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_killed_runner_leaves_an_incomplete_record_and_detach_runs_on(tmp_path: Path) -> None:
    kill_runner_mid_pipeline(tmp_path, "pipe", "local")
    wait_for(lambda: log_has(tmp_path, "pipe", "a", "exited with code 0"), what="step a to finish on its own")
    ps = cli("ps", "--all", cwd=tmp_path)
    assert ps.returncode == 0 and "incomplete" in ps.stdout and "never ran: b" in ps.stdout, ps.stdout
    assert ps.stdout.splitlines()[0].split()[:4] == ["JOB", "RUN", "STATUS", "STEP"]
    (rec,) = records(tmp_path, "pipe")
    assert rec["status"] == "incomplete" and [s["status"] for s in rec["steps"]] == ["succeeded", "not_run"]
    assert rec["ended"] is not None
    hist = cli("history", "pipe", cwd=tmp_path)
    assert "b:not_run" in hist.stdout and "DURATION" in hist.stdout

    detached = cli("run", "pipe", "--detach", cwd=tmp_path, timeout=30)
    assert detached.returncode == 0 and "runner logs -f pipe" in detached.stdout, detached.stdout + detached.stderr
    wait_for(lambda: len(records(tmp_path, "pipe")) == 2 and records(tmp_path, "pipe")[-1]["status"] == "succeeded",
             timeout=120, what="the detached run")
    assert log_has(tmp_path, "pipe", "b", "b-ran")


@pytest.mark.docker
def test_a_killed_runner_leaves_no_container_behind(tmp_path: Path) -> None:
    import docker

    kill_runner_mid_pipeline(tmp_path, "dock-pipe", "docker")
    client = docker.from_env()
    containers = lambda: client.containers.list(all=True, filters={"label": "runner.job=dock-pipe"})  # noqa: E731
    wait_for(lambda: all(c.status == "exited" for c in containers()), timeout=60, what="the container to exit")
    assert containers(), "the killed runner's container should still be there before reconciling"
    ps = cli("ps", "--all", cwd=tmp_path)
    assert "incomplete" in ps.stdout and "removed" in ps.stdout, ps.stdout
    assert not containers()  # reconciled: the exited container is gone
    (rec,) = records(tmp_path, "dock-pipe")
    assert rec["status"] == "incomplete" and rec["steps"][1]["status"] == "not_run"


@pytest.mark.slurm
def test_a_pending_slurm_job_shows_its_reason_and_a_stop_is_an_interrupt(tmp_path: Path) -> None:
    from tests.runner.test_slurm import _slurm

    _slurm()
    job(tmp_path, """\
        name: waits
        policy: command
        executor: slurm
        slurm: {runtime: local, extra: ["--begin=now+3600"]}
        steps: {s: {command: "echo never"}}
        """, "waits")
    proc = start("run", "waits", cwd=tmp_path)
    wait_for(lambda: bool(records(tmp_path, "waits")) and bool(records(tmp_path, "waits")[0]["steps"][0]["handle"].get(
        "job_id")), what="the submission")
    ps = cli("ps", cwd=tmp_path)
    assert "PENDING (BeginTime)" in ps.stdout, ps.stdout
    stop = cli("stop", "waits", cwd=tmp_path)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    out, _ = proc.communicate(timeout=120)
    (rec,) = records(tmp_path, "waits")
    assert rec["status"] == "interrupted" and rec["steps"][0]["status"] == "interrupted", (rec, out)
    assert "CANCELLED" in (rec["steps"][0]["detail"] or "") and "PENDING (BeginTime)" in out
