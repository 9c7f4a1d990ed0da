from collections.abc import Callable
from pathlib import Path

import pytest

from runner.errors import SpecError
from runner.spec.load import load_job

REPO = Path(__file__).resolve().parents[3]
SHIPPED = sorted((REPO / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_job_loads(path: Path) -> None:
    job = load_job(path, {})
    assert job.name == path.stem
    assert job.step_names()


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as e:
        load_job(path, env or {})
    return [str(p) for p in e.value.problems]


def test_all_problems_reported_at_once_in_line_order(write_job: Callable[..., Path]) -> None:
    path = write_job("""\
        name: bad
        policy: dp3
        resources:
          gpu: 2
          gpus: [0, a]
          shm: lots
          cpus: many
        env:
          X: ${NOPE_UNSET}
        steps:
          train:
            epochs: ten
            batch_sise: 3
        """)
    got = problems(path)
    assert len(got) == 7
    lines = [int(p.split(":")[1]) for p in got]
    assert lines == sorted(lines)
    text = "\n".join(got)
    assert f"{path}:4:3: resources.gpu: unknown key 'gpu' in resources; did you mean 'gpus'?" in text
    assert f"{path}:5:3: resources.gpus: GPU ids are integers from 0 to 63; not: [1] 'a'" in text
    assert "resources.shm: cannot parse 'lots' as a size" in text
    assert "resources.cpus: expected a number, got 'many' (str)" in text
    assert "env.X: environment variable NOPE_UNSET is not set" in text
    assert "steps.train.epochs: expected an integer, got 'ten' (str)" in text
    assert "steps.train.batch_sise: unknown key 'batch_sise' in steps.train; did you mean 'batch_size'?" in text


def test_unknown_top_level_key_suggests_and_lists(write_job: Callable[..., Path]) -> None:
    got = problems(write_job("name: a\npolicy: rdt\nresorces: {}\nzzz: 1\n"))
    assert any("unknown key 'resorces'; did you mean 'resources'?" in p for p in got)
    assert any("unknown key 'zzz' (known: " in p for p in got)


def test_unknown_policy_and_missing_name(write_job: Callable[..., Path]) -> None:
    assert "unknown policy 'dp4'; did you mean 'dp3'?" in problems(write_job("name: a\npolicy: dp4\n"))[0]
    assert "policy: is required" in problems(write_job("name: a\n"))[0]
    assert "name: is required but missing" in "\n".join(problems(write_job("policy: dp3\n")))


def test_wrong_types_name_path_value_and_expectation(write_job: Callable[..., Path]) -> None:
    got = problems(write_job("name: a\npolicy: dp3\nsteps:\n  train:\n    use_pc_color: maybe\n    logger: wandbb\n"))
    assert any("steps.train.use_pc_color: expected true or false, got 'maybe'" in p for p in got)
    assert any("steps.train.logger: must be one of 'none', 'tensorboard' or 'wandb', got 'wandbb'; "
               "did you mean 'wandb'?" in p for p in got)


def test_host_access_only_for_deploy(write_job: Callable[..., Path]) -> None:
    got = problems(write_job("name: a\npolicy: dp3\nsteps:\n  train:\n    network: host\n    devices: [/dev/bus/usb]\n"))
    assert any("steps.train.network: only the deploy step may ask for host network" in p for p in got)
    assert any("steps.train.devices" in p for p in got)
    job = load_job(write_job("name: a\npolicy: dp3\nsteps:\n  deploy:\n    network: host\n    devices: [/dev/bus/usb]\n"), {})
    assert job.step("deploy").network == "host"


def test_empty_file_and_non_mapping(write_job: Callable[..., Path]) -> None:
    assert "this one is empty" in problems(write_job(""))[0]
    assert "this one is a list" in problems(write_job("- a\n"))[0]


def test_relative_paths_resolve_against_repo_root(write_job: Callable[..., Path], tmp_path: Path) -> None:
    job = load_job(write_job("name: a\npolicy: dp3\ndata: {raw: demos/x}\nmounts: [{source: m, target: /m}]\n"), {})
    assert job.spec.data.raw == tmp_path / "demos" / "x"
    assert job.spec.mounts[0].source == tmp_path / "m"
    assert job.spec.outputs.runs_dir == tmp_path / "runs"


def test_step_without_options_gets_defaults(write_job: Callable[..., Path]) -> None:
    job = load_job(write_job("name: a\npolicy: dp3\nsteps:\n  train:\n  eval: {}\n"), {})
    assert job.step_names() == ["train", "eval"]
    assert job.step("train").batch_size == 256
    assert job.step("train").horizon == 8


def test_command_jobs_need_steps_with_commands(write_job: Callable[..., Path]) -> None:
    assert any("at least one step" in p for p in problems(write_job("name: a\npolicy: command\n")))
    got = problems(write_job("name: a\npolicy: command\nsteps:\n  s1: {env: {}}\n"))
    assert any("steps.s1.command: is required" in p for p in got)


def test_a_step_names_only_third_party_checkouts_the_job_has(write_job: Callable[..., Path]) -> None:
    path = write_job("""\
        name: a
        policy: dp3
        third_party: {gello: g}
        steps:
          deploy:
            third_party: [gelo]
        """)
    with pytest.raises(SpecError) as e:
        load_job(path, {})
    text = str(e.value)
    assert f"{path}:6" in text and "steps.deploy.third_party[0]" in text
    assert "'gelo' is not in the job's third_party section (it has: gello)" in text and "gello" in text


def test_the_old_gello_flag_still_means_third_party_gello(write_job: Callable[..., Path]) -> None:
    job = load_job(write_job("name: a\npolicy: dp3\nthird_party: {gello: g}\nsteps: {deploy: {gello: true}, "
                             "eval: {gello: false}}\n"), {})
    assert job.spec.steps.deploy.third_party == ["gello"]  # type: ignore[attr-defined]
    assert job.spec.steps.eval.third_party == []  # type: ignore[attr-defined]
