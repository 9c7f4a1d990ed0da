"""The step context: one class writes it on the host and reads it in the step, the step's options typed again."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from policies.convert_options import CloudOptions, ConvertCommon, Intrinsics
from policies.dp3.config import Dp3Train
from robot.options import Deploy, GripperConvention
from runner.plan import Machine
from runner.spec.load import parse_job_text
from runner.spec.models import default_of
from runner.step_context import SCHEMA_VERSION, StepContext, StepInputError
from tests.runner.test_plan import plan, shipped

JOB = """name: a
policy: dp3
env: {HF_TOKEN: t0k}
steps:
  train: {epochs: 7, betas: [0.9, 0.99], env: {WANDB_API_KEY: s3cret}}
"""


def written(tmp_path: Path, machine: Machine, text: str = JOB, step: str = "train") -> Path:
    job = parse_job_text(text, tmp_path / "a.yaml", {})
    path = tmp_path / "train.context.json"
    plan(job, step, machine).contexts["docker"].write(path)
    return path


def test_the_step_reads_back_typed_options_with_the_job_values_and_the_defaults(tmp_path: Path, machine: Machine) -> None:
    ctx = StepContext.read(written(tmp_path, machine), Dp3Train)
    o = ctx.typed(Dp3Train)
    assert (o.epochs, o.betas, o.batch_size, o.weight_decay) == (7, (0.9, 0.99), 256, 1e-6)
    assert ctx.schema_version == SCHEMA_VERSION and ctx.run_dir == Path("/job") / ctx.run_id
    with pytest.raises(TypeError, match="not Deploy"):
        ctx.typed(Deploy)


def test_secrets_never_reach_the_context_file(tmp_path: Path, machine: Machine) -> None:
    text = written(tmp_path, machine).read_text()
    assert "s3cret" not in text and "t0k" not in text
    ctx = StepContext.read(tmp_path / "train.context.json", Dp3Train)
    assert ctx.options.env["WANDB_API_KEY"] == "<redacted>"


def test_a_context_from_other_code_asks_for_a_rebuild(tmp_path: Path, machine: Machine) -> None:
    path = written(tmp_path, machine)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "schema_version": 1}))
    with pytest.raises(StepInputError, match=r"schema 1.*rebuild it \(`runner build JOB`\)"):
        StepContext.read(path, Dp3Train)


def test_options_are_validated_again_in_the_step(tmp_path: Path, machine: Machine) -> None:
    path = written(tmp_path, machine)
    data = json.loads(path.read_text())
    data["options"]["epochs"] = -1  # an image whose code disagrees with the host's, or a hand-edited file
    path.write_text(json.dumps(data))
    with pytest.raises(StepInputError, match="epochs"):
        StepContext.read(path, Dp3Train)
    path.write_text("{not json")
    with pytest.raises(StepInputError, match="cannot read the step context"):
        StepContext.read(path, Dp3Train)


def test_a_requeued_training_step_resumes(tmp_path: Path, machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    path = written(tmp_path, machine)
    assert not StepContext.read(path, Dp3Train).resume
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert StepContext.read(path, Dp3Train).resume


def test_shipped_jobs_round_trip(tmp_path: Path, machine: Machine) -> None:
    for name, step in (("dp3_banana", "deploy"), ("rdt_demo_clean", "train"), ("sample_dp3", "convert")):
        p = plan(shipped(name), step, machine)
        ctx = p.contexts["local"]
        ctx.write(tmp_path / "c.json")
        back = StepContext.read(tmp_path / "c.json", type(ctx.options))
        assert back == ctx, name


def _library_defaults() -> list[tuple[type, type, dict[str, str]]]:
    from policies.data.convert import ConvertOptions
    from policies.data.demos import GelloOptions
    from policies.data.pointcloud import CloudSpec
    from policies.data.transform import TimeOptions
    from policies.dp3.model import Dp3Config
    from robot.loop import LoopConfig
    from robot.safety import Limits

    same: dict[str, str] = {}
    return [(TimeOptions, ConvertCommon, same), (GelloOptions, ConvertCommon, same), (ConvertOptions, ConvertCommon, same),
            (CloudSpec, CloudOptions, same), (CloudSpec, Intrinsics, same), (Dp3Config, Dp3Train, same),
            (LoopConfig, Deploy, same), (LoopConfig, GripperConvention, {"binarize_action_gripper": "binarize_gripper"}),
            (Limits, Deploy, {"max_delta": "max_joint_delta"})]


def test_library_dataclasses_default_as_the_job_models_declare() -> None:
    """Each option's default is written once, in a job model; the libraries' dataclasses must agree with it."""
    checked = 0
    for lib, model, renamed in _library_defaults():
        for f in dataclasses.fields(lib):
            name = renamed.get(f.name, f.name)
            if name in model.model_fields and f.default is not dataclasses.MISSING:
                want = default_of(model, name)
                want = tuple(want) if isinstance(want, list) else want  # a job's list is the library's tuple
                assert f.default == want, f"{lib.__name__}.{f.name} vs {model.__name__}.{name}"
                checked += 1
    assert checked >= 25
