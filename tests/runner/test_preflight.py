from collections.abc import Callable
from pathlib import Path

from runner.preflight import EngineFacts, check_disk, check_engine, check_paths, checkpoint_disk_warnings
from runner.spec.load import load_job

GIB = 1024**3


def test_gpus_without_an_nvidia_runtime_are_refused(write_job: Callable[..., Path]) -> None:
    job = load_job(write_job("name: a\npolicy: dp3\nresources: {gpus: all}\nsteps: {train: }\n"), {})
    reasons = check_engine(job, EngineFacts(("io.containerd.runc.v2", "runc"), False, 100 * GIB, True))
    assert len(reasons) == 1 and "no NVIDIA runtime" in reasons[0] and "nvidia-ctk" in reasons[0]
    assert check_engine(job, EngineFacts(("nvidia", "runc"), False, 100 * GIB, True)) == []
    assert check_engine(job, EngineFacts(("runc",), True, 100 * GIB, True)) == []  # CDI devices also serve


def test_low_disk_is_refused_only_when_a_build_is_needed(write_job: Callable[..., Path], tmp_path: Path) -> None:
    job = load_job(write_job("name: a\npolicy: dp3\nsteps: {train: }\n"), {})
    assert check_engine(job, EngineFacts(("runc",), False, 1 * GIB, image_cached=True)) == []
    assert "free space" in check_engine(job, EngineFacts(("runc",), False, 1 * GIB, image_cached=False))[0].lower()
    assert check_disk(tmp_path, 1 * GIB) and not check_disk(tmp_path, 10 * GIB)


def test_paths_needed_per_step(write_job: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    job = load_job(write_job("name: a\npolicy: dp3\ndata: {raw: raw, converted: conv}\nthird_party: {gello: g}\n"
                             "steps: {convert: , train: , deploy: {third_party: [gello]}}\n"), {})
    assert [str(i) for i in check_paths(job, "convert")] == []  # convert writes data.converted
    assert [i.key for i in check_paths(job, "train")] == ["data.converted"]
    # deploy mounts the converted data read-only (it must exist), and gello because it asks for it
    assert [i.key for i in check_paths(job, "deploy")] == ["data.converted", "third_party.gello"]
    (tmp_path / "conv").mkdir()
    (tmp_path / "raw").rmdir()  # the demos deleted after converting: training does not mount them
    assert check_paths(job, "train") == [] and [i.key for i in check_paths(job, "convert")] == ["data.raw"]


def test_memory_is_checked_against_this_machine_only_when_the_steps_run_here(write_job: Callable[..., Path]) -> None:
    """A Slurm submission asks the nodes for memory; the submitting machine's own RAM does not bound it."""
    from runner.executors.slurm import SlurmExecutor
    from runner.preparation import preflight_reasons

    job = load_job(write_job("name: big\npolicy: dp3\nresources: {memory: 1000t}\nsteps: {train: }\n"), {})
    assert any("resources.memory is 1000t but this machine has" in r for r in preflight_reasons(job, ["train"]))
    assert not any("memory" in r for r in preflight_reasons(job, ["train"], here=SlurmExecutor.runs_here))


def test_checkpoints_that_will_not_fit_are_a_warning_before_the_run(write_job: Callable[..., Path]) -> None:
    """RDT-1B's fused checkpoints (18 bytes a parameter: 22.1 GB), as many as the run keeps: 20000 steps every 2500
    write 8, all kept under upstream's limit of 40; a limit of 3 keeps 4 at once (the newest before the oldest
    goes). DP3 cannot tell before it runs (nothing said)."""
    job = load_job(write_job("name: r\npolicy: rdt\nsteps:\n  train: {max_train_steps: 20000, "
                             "checkpointing_period: 2500}\n"), {})
    assert job.step("train").checkpoints_disk() == (1_228_319_872 * 18, 8)
    said = checkpoint_disk_warnings(job, ["convert", "train"], 100 * 10**9)
    assert len(said) == 1 and "steps.train keeps up to 8 checkpoints of ~22.1 GB (176.9 GB)" in said[0]
    assert "100.0 GB free" in said[0] and "checkpoints_total_limit" in said[0]
    assert checkpoint_disk_warnings(job, ["train"], 180 * 10**9) == []
    three = load_job(write_job("name: r3\npolicy: rdt\nsteps: {train: {checkpoints_total_limit: 3}}\n", "r3.yaml"), {})
    assert three.step("train").checkpoints_disk() == (1_228_319_872 * 18, 4)
    dp3 = load_job(write_job("name: d\npolicy: dp3\nsteps: {train: }\n", "d.yaml"), {})
    assert checkpoint_disk_warnings(dp3, ["train"], 0) == []
