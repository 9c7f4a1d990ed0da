"""Executors are a registry: one registered from outside (this test module, as a lab's package would) runs a job
through the unchanged orchestrator; an unknown name is refused by name, with the known ones."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from runner import executors, records
from runner.errors import SpecError
from runner.executors.base import ExecutorBase, StepHandle, StepOutcome
from runner.orchestrate import Orchestrator, RunRequest
from runner.plan import StepPlan
from runner.records import StepRecord
from runner.spec.load import load_job

REPO = Path(__file__).resolve().parents[3]


class PlainExecutor(ExecutorBase):
    """A lab's executor in a few lines: the step's own argv through subprocess.run, its output into the log."""

    name = "plain"

    def __init__(self, environ: Mapping[str, str] | None = None, out: BinaryIO | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.started: list[str] = []

    def run_step(self, plan: StepPlan, on_start: Callable[[StepHandle], None]) -> StepOutcome:
        on_start(StepHandle({"ticket": f"plain-{plan.step}"}))
        self.started.append(plan.step)
        done = subprocess.run(list(plan.local.argv), env={**self.environ, **dict(plan.local.env)}, cwd=plan.local.cwd,
                              capture_output=True, check=False)
        with open(plan.log_file, "ab") as f:
            f.write(done.stdout + done.stderr)
        return StepOutcome(exit_code=done.returncode)

    def stop(self, step: StepRecord, grace_s: float) -> bool:
        return False

    def is_alive(self, step: StepRecord) -> bool:
        return False


@pytest.fixture
def plain() -> Iterator[list[PlainExecutor]]:
    made: list[PlainExecutor] = []

    def factory(**kw: Any) -> PlainExecutor:
        made.append(PlainExecutor(**kw))
        return made[-1]

    executors.register("plain", factory)
    yield made
    executors._REGISTERED.pop("plain")


JOB = """\
name: reg
policy: command
executor: plain
steps:
  hello:
    command: ["sh", "-c", "echo hello from $RUNNER_STEP"]
outputs: {runs_dir: RUNS}
"""


def test_an_executor_registered_from_outside_runs_a_job(plain: list[PlainExecutor], tmp_path: Path) -> None:
    job_file = tmp_path / "reg.yaml"
    job_file.write_text(JOB.replace("RUNS", str(tmp_path / "runs")))
    job = load_job(job_file, os.environ)
    said: list[str] = []
    record = Orchestrator(os.environ, said.append, out=io.BytesIO()).run(RunRequest(job, ["hello"]))
    assert record.status == "succeeded" and plain[0].started == ["hello"]
    step = record.step("hello")
    assert step.executor == "plain"
    assert "hello from hello" in Path(step.log).read_text()
    assert records.load(tmp_path / "runs" / "reg" / record.run_id / "run.json").steps[0].status == "succeeded"
    assert "plain" in executors.names()


def test_the_orchestrator_names_no_executor() -> None:
    """Run preparation, the orchestrator and step running know executors only through their protocol."""
    for module in ("orchestrate.py", "preparation.py", "stepping.py"):
        source = (REPO / "runner" / module).read_text()
        named = [n for n in ('"slurm"', '"local"', '"docker"', "SlurmExecutor", "LocalExecutor", "DockerExecutor",
                             "runner.executors.docker", "runner.executors.slurm") if n in source]
        assert not named, (module, named)


def test_unknown_executors_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(executors.UnknownExecutor, match=r"unknown executor 'dokcer': did you mean 'docker'\? known "
                                                      r"executors are docker, local, slurm"):
        executors.make_executor("dokcer")
    job_file = tmp_path / "bad.yaml"
    job_file.write_text(JOB.replace("plain", "slurrm").replace("RUNS", str(tmp_path)))
    with pytest.raises(SpecError, match=r"bad.yaml:3.*executor.*did you mean 'slurm'"):
        load_job(job_file, os.environ)


def test_plans_render_through_the_executor_class_without_making_one(plain: list[PlainExecutor], tmp_path: Path) -> None:
    """`runner plan` shows a registered executor's command from its class (ExecutorBase's process rendering here);
    nothing is constructed, so no engine is contacted."""
    from runner.machine import gather_machine
    from runner.plan import build_plan, render_plan_text
    from runner.plan_json import plan_to_dict

    job_file = tmp_path / "reg.yaml"
    job_file.write_text(JOB.replace("RUNS", str(tmp_path / "runs")))
    p = build_plan(load_job(job_file, os.environ), "hello", gather_machine(os.environ), run_id="r1", image="")
    assert p.executor == "plain"
    text = render_plan_text(p)
    assert "executor plain" in text and "echo hello from $RUNNER_STEP" in text and "docker run" not in text
    assert plan_to_dict(p)["argv"] == list(p.local.argv)
    assert plain == []
