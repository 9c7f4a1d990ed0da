import difflib
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from runner.dockerargs import render_cli
from runner.plan import Machine, StepPlan, build_plan, render_plan_text
from runner.spec.load import LoadedJob, load_job, parse_job_text

REPO = Path(__file__).resolve().parents[2]
SNAPSHOTS = REPO / "tests" / "snapshots" / "plan"
RUN = "20261127-120000-abcd"


def plan(job: LoadedJob, step: str, machine: Machine, **kw: object) -> StepPlan:
    return build_plan(job, step, machine, run_id=RUN, image="robo-runner/x:1", **kw)  # type: ignore[arg-type]


def shipped(name: str) -> LoadedJob:
    return load_job(REPO / "jobs" / f"{name}.yaml", {})


def check_snapshot(name: str, text: str) -> None:
    text = text.replace(str(REPO), "<repo>")
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS") or not path.exists():
        path.write_text(text)
    expected = path.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "rendered"))
    assert not diff, f"plan differs from the reviewed snapshot (UPDATE_SNAPSHOTS=1 to accept):\n{diff}"


@pytest.mark.parametrize(("job", "step"), [("dp3_banana", "train"), ("dp3_banana", "deploy"), ("rdt_demo_clean", "train")])
def test_plan_snapshots(job: str, step: str, machine: Machine) -> None:
    check_snapshot(f"{job}_{step}", render_plan_text(plan(shipped(job), step, machine)))


def test_dp3_banana_train_fixes_every_docker_failure_of_the_workflow(machine: Machine) -> None:
    argv = render_cli(plan(shipped("dp3_banana"), "train", machine).docker)
    joined = " ".join(argv)
    assert argv[argv.index("--shm-size") + 1] == "8g"  # Bus error with docker's 64m
    assert "NCCL_SOCKET_IFNAME=lo" in argv  # eth0 did not exist
    assert argv[argv.index("--gpus") + 1] == '"device=3"'
    assert "--privileged" not in argv and argv[argv.index("--network") + 1] == "bridge"
    assert argv[argv.index("--user") + 1] == "1000:1000"  # outputs not root-owned
    for name in ("NCCL_NVLS_ENABLE=0", "TORCH_SYMM_MEM_DISABLE_MULTICAST=1", "NVSHMEM_DISABLE_NVLS=1"):
        assert name in argv
    assert "sekrit" not in joined and "WANDB_API_KEY" in argv  # passed through by name
    converted = "/data2/blzou/dataset/robotwin/converted/move_banana_to_box-demo_clean"
    assert f"type=bind,source={converted},target=/data/converted,readonly" in argv
    assert "target=/job" in joined and "target=/job,readonly" not in joined
    assert "/third_party/gello" not in joined  # only deploy asks for gello


def test_convert_writes_converted_data(machine: Machine) -> None:
    argv = render_cli(plan(shipped("dp3_banana"), "convert", machine).docker)
    assert any(a.endswith("target=/data/converted") for a in argv)


def test_convert_check_does_not_mount_the_converted_folder(machine: Machine) -> None:
    checking = plan(shipped("dp3_banana"), "convert", machine, mode="check")
    assert not any("/data/converted" in m.target for m in checking.docker.mounts)
    assert "converted" not in checking.contexts["docker"].paths and "raw" in checking.contexts["docker"].paths


def test_deploy_gets_host_network_and_gello_on_pythonpath(machine: Machine) -> None:
    p = plan(shipped("dp3_banana"), "deploy", machine)
    argv = render_cli(p.docker)
    assert argv[argv.index("--network") + 1] == "host"
    assert "PYTHONPATH=/opt/robo-runner:/third_party/gello" in argv
    assert any("--network host" in o for o, _ in p.why)


def test_rdt_train_shm_raised_for_its_loader(machine: Machine, write_job: Callable[..., Path]) -> None:
    job = load_job(write_job("name: a\npolicy: rdt\nsteps:\n  train:\n    train_batch_size: 64\n"), {})
    p = plan(job, "train", machine)
    need = job.step("train").loader_shm_bytes()
    assert p.docker.shm_size is not None and p.docker.shm_size >= need * 1.25
    assert p.docker.shm_size > 8 * 1024**3
    assert any("DataLoader workers need" in r for _, r in p.why)


def test_explicit_shm_below_need_warns(write_job: Callable[..., Path], machine: Machine) -> None:
    job = load_job(write_job("name: a\npolicy: dp3\nsteps:\n  train:\n    num_workers: 8\n    shm: 64m\n"), {})
    p = plan(job, "train", machine)
    assert p.docker.shm_size == 64 * 1024**2
    assert any("Bus error" in w for w in p.warnings)


def test_bad_explicit_nccl_interface_is_a_warning_naming_real_ones(write_job: Callable[..., Path], machine: Machine) -> None:
    job = load_job(write_job("name: a\npolicy: rdt\nresources: {nodes: 2, gpus: 2, nccl_socket_ifname: eth0}\n"
                             "steps: {train: }\n"), {})
    p = plan(job, "train", machine, executor="docker")
    assert any("no interface matching eth0" in w and "enp5s0" in w for w in p.warnings)


def test_local_args_mirror_the_container(machine: Machine, write_job: Callable[..., Path]) -> None:
    job = load_job(write_job("name: a\npolicy: command\nresources: {gpus: [1, 2]}\nenv: {HF_TOKEN: t0k}\n"
                             "steps:\n  go: {command: [echo, hi]}\n"), {})
    p = plan(job, "go", machine, executor="local")
    env = dict(p.local.env)
    assert env["CUDA_VISIBLE_DEVICES"] == "1,2"
    assert env["PYTHONPATH"] == "/src/robo-runner"
    assert p.local.argv[-2:] == ("echo", "hi")
    assert p.local.argv[:3] == ("/usr/bin/python3", "-m", "runner.inside")
    assert p.contexts["local"].paths["job_dir"] == str(job.spec.outputs.runs_dir / "a")
    assert p.contexts["docker"].paths["job_dir"] == "/job"
    assert p.contexts["docker"].spec["env"]["HF_TOKEN"] == "<redacted>"
    assert "t0k" not in render_plan_text(p)


def test_several_gpus_start_dp3_training_with_torchrun(write_job: Callable[..., Path], machine: Machine) -> None:
    job = load_job(write_job("name: a\npolicy: dp3\nresources: {gpus: [0, 1]}\nsteps: {train: , eval: }\n"), {})
    argv = plan(job, "train", machine).docker.command
    assert argv[argv.index("--") + 1:] == ("python3", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                           "2", "-m", "policies.dp3.steps", "train")
    assert plan(job, "eval", machine).docker.command[-3:] == ("-m", "policies.dp3.steps", "eval")
    one = load_job(write_job("name: b\npolicy: dp3\nresources: {gpus: 1}\nsteps: {train: }\n", "b.yaml"), {})
    assert "torch.distributed.run" not in plan(one, "train", machine).docker.command


def test_stop_grace_comes_from_the_step(machine: Machine, write_job: Callable[..., Path]) -> None:
    rdt = plan(shipped("rdt_demo_clean"), "train", machine)
    assert rdt.stop_grace_s == 300 and "RUNNER_STOP_GRACE_S=300" in render_cli(rdt.docker)  # RDT-1B's ~22 GB
    # torchrun (under accelerate too) waits as long before it kills its ranks, not its own 30 s
    assert "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=300" in render_cli(rdt.docker)
    assert plan(shipped("dp3_banana"), "train", machine).stop_grace_s == 30
    job = load_job(write_job("name: g\npolicy: dp3\nsteps:\n  train: {stop_grace_s: 90.5}\n"), {})
    grace = plan(job, "train", machine)
    assert grace.stop_grace_s == 90.5 and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=91" in render_cli(grace.docker)


def test_each_step_mounts_and_imports_only_the_third_party_checkouts_it_lists(machine: Machine, tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    (tmp_path / "rt").mkdir()
    job = parse_job_text("name: a\npolicy: dp3\nthird_party: {gello: g, robotwin: rt}\n"
                         "steps: {train: {third_party: [robotwin]}, deploy: {third_party: [gello, robotwin]}, eval: }\n",
                         tmp_path / "a.yaml", {})
    for step, want in (("train", ["/third_party/robotwin"]), ("deploy", ["/third_party/gello", "/third_party/robotwin"]),
                       ("eval", [])):
        p = plan(job, step, machine)
        assert sorted(m.target for m in p.docker.mounts if m.target.startswith("/third_party")) == want, step
        env = dict((e.name, e.value) for e in p.docker.env)
        assert env["PYTHONPATH"] == ":".join(["/opt/robo-runner", *want]), step
        host = {"/third_party/gello": str(tmp_path / "g"), "/third_party/robotwin": str(tmp_path / "rt")}
        local = dict(p.local.env)["PYTHONPATH"].split(":")
        assert local[1:1 + len(want)] == [host[w] for w in want] and not set(host.values()) & set(local[1 + len(want):])


def test_torch_compile_s_caches_live_in_the_job_folder_for_both_executors(machine: Machine,
                                                                           write_job: Callable[..., Path]) -> None:
    """A container's /tmp starts empty: without a cache in the job folder every run (a resume too) compiles anew."""
    job = load_job(write_job("name: a\npolicy: dp3\nsteps: {train: }\n"), {})
    docker = plan(job, "train", machine, executor="docker")
    env = {e.name: e.value for e in docker.docker.env}
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/job/.compile-cache/inductor"
    assert env["TRITON_CACHE_DIR"] == "/job/.compile-cache/triton"
    host = job.spec.outputs.runs_dir / "a" / ".compile-cache"
    assert f"torch.compile's kernels kept in {host}" in render_plan_text(docker)
    local = dict(plan(job, "train", machine, executor="local").local.env)
    assert local["TORCHINDUCTOR_CACHE_DIR"] == str(host / "inductor") and local["TRITON_CACHE_DIR"] == str(host / "triton")


def test_a_compile_cache_the_job_or_the_caller_sets_is_kept(machine: Machine, write_job: Callable[..., Path]) -> None:
    job = load_job(write_job("name: a\npolicy: dp3\nsteps:\n  train: {env: {TORCHINDUCTOR_CACHE_DIR: /scratch/ind}}\n"), {})
    docker = plan(job, "train", machine, executor="docker")
    names = [e.name for e in docker.docker.env]
    assert names.count("TORCHINDUCTOR_CACHE_DIR") == 1 and "TORCHINDUCTOR_CACHE_DIR=/scratch/ind" in render_cli(docker.docker)
    assert "TRITON_CACHE_DIR=/job/.compile-cache/triton" in render_cli(docker.docker)  # the other one still set
    assert "kernels kept in" not in render_plan_text(docker)
    mine = replace(machine, environ={**machine.environ, "TRITON_CACHE_DIR": "/home/u/.triton"})
    local = plan(job, "train", mine, executor="local").local.env
    assert ("TRITON_CACHE_DIR" not in dict(local)) and dict(local)["TORCHINDUCTOR_CACHE_DIR"] == "/scratch/ind"
