"""Policies are plugins: every registered policy passes the same conformance checks, and one defined outside the
runner (tests/policies/plugin/toy.py) is registered and runs a job end to end with the local executor."""

from __future__ import annotations

import importlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import policies
from policies import PolicyInfo
from runner.orchestrate import Orchestrator, RunRequest
from runner.plan import build_plan
from runner.spec.load import load_job
from runner.spec.models import JobCommon
from tests.policies.plugin import toy

LAUNCHERS = {"torchrun"}


@pytest.fixture
def toy_registered() -> Iterator[PolicyInfo]:
    policies.register(toy.POLICY)
    yield toy.POLICY
    policies._REGISTERED.pop("toy")


@pytest.mark.parametrize("name", sorted(policies.policies()))
def test_every_policy_conforms(name: str) -> None:
    info = policies.get_policy(name)
    assert info.name == name
    assert issubclass(info.job_model, JobCommon)
    assert info.job_model.model_fields["policy"].annotation is not None
    assert (Path(policies.__file__).parents[1] / "templates" / f"Dockerfile.{info.image}.j2").is_file()
    assert set(dict(info.multi_gpu).values()) <= LAUNCHERS and set(dict(info.multi_gpu)) <= set(info.steps)
    if info.fixed_steps:
        module = importlib.import_module(info.entry)
        assert set(module.STEPS) == set(info.steps), f"{info.entry}.STEPS must hold exactly the policy's steps"
        assert all(callable(fn) for fn in module.STEPS.values())
        assert set(info.steps) <= set(info.job_model.model_fields["steps"].annotation.model_fields)  # type: ignore[union-attr]


def test_an_outside_policy_is_registered_and_runs(toy_registered: PolicyInfo, tmp_path: Path) -> None:
    test_every_policy_conforms("toy")
    job_file = tmp_path / "toy.yaml"
    job_file.write_text(f"name: toyjob\npolicy: toy\nexecutor: local\nsteps:\n  train: {{epochs: 3}}\n"
                        f"outputs: {{runs_dir: {tmp_path / 'runs'}}}\n")
    job = load_job(job_file, os.environ)
    plan = build_plan(job, "train", Orchestrator(os.environ, print).machine, run_id="r1", image="")
    assert plan.local.argv[-2:] == ("tests.policies.plugin.toy", "train")
    out = io.BytesIO()
    record = Orchestrator(os.environ, lambda _m: None, out=out).run(RunRequest(job, ["train"]))
    assert record.status == "succeeded", out.getvalue().decode()[-2000:]
    assert b"toy: epoch 3/3" in out.getvalue()
    run_dir = tmp_path / "runs" / "toyjob" / record.run_id
    assert json.loads((run_dir / "toy.json").read_text()) == {"epochs": 3}


def test_an_unknown_policy_names_the_known_ones(tmp_path: Path) -> None:
    from runner.errors import SpecError

    job_file = tmp_path / "bad.yaml"
    job_file.write_text("name: bad\npolicy: toi\n")
    with pytest.raises(SpecError, match=r"unknown policy 'toi'.*known: dp3, rdt, command"):
        load_job(job_file, os.environ)
