"""Slurm: the rendered sbatch scripts of a 2-node x 4-GPU RDT job (docker, pyxis, Apptainer) against reviewed
snapshots, and, against a real one-node Slurm (`.ci/setup-slurm.sh`), submit -> preemption signal -> checkpoint ->
requeue -> automatic resume -> completion, and a real error that is not requeued."""

import difflib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from runner.machine import gather_machine
from runner.plan import Machine, build_plan
from runner.slurm import node_check, render_sbatch
from runner.spec.load import load_job

REPO = Path(__file__).resolve().parents[2]
SNAPSHOTS = REPO / "tests" / "snapshots" / "slurm"
MULTI = """\
name: rdt_2x4
policy: rdt
task: move_banana_to_box
data: {converted: /lab/converted/move_banana_to_box}
weights: {rdt: /lab/weights/rdt-1b, siglip: /lab/weights/siglip-so400m-patch14-384}
resources: {nodes: 2, gpus: 4, cpus: 32, memory: 200g}
slurm: {partition: gpu, account: lab, qos: normal, time: "24:00:00", runtime: RUNTIME, apptainer_image: /lab/rdt.sif}
steps:
  train: {max_train_steps: 20000, train_batch_size: 32}
"""


@pytest.mark.parametrize("runtime", ["docker", "pyxis", "apptainer"])
def test_two_node_rdt_scripts_match_reviewed_snapshots(runtime: str, machine: Machine,
                                                       write_job: Callable[..., Path]) -> None:
    job = load_job(write_job(MULTI.replace("RUNTIME", runtime)), {})
    plan = build_plan(job, "train", machine, run_id="20261127-120000-abcd", image="robo-runner/rdt:1", executor="slurm")
    text = render_sbatch(job, plan, machine.python).replace(str(job.spec.outputs.runs_dir), "<runs>")
    path = SNAPSHOTS / f"rdt_2x4_{runtime}.sbatch"
    if os.environ.get("UPDATE_SNAPSHOTS") or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    expected = path.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "rendered"))
    assert not diff, f"sbatch script differs from the reviewed snapshot (UPDATE_SNAPSHOTS=1 to accept):\n{diff}"
    sbatch = dict(line[len("#SBATCH "):].split("=", 1) for line in text.splitlines()
                  if line.startswith("#SBATCH --") and "=" in line)
    assert sbatch["--nodes"] == "2" and sbatch["--gpus-per-node"] == "4" and sbatch["--ntasks-per-node"] == "1"
    # the signal leaves the training step its 300 s stop grace (RDT-1B's checkpoint) and a minute to spare
    assert sbatch["--signal"] == "B:USR2@360" and "#SBATCH --requeue" in text
    assert sbatch["--partition"] == "gpu" and sbatch["--account"] == "lab" and sbatch["--time"] == "24:00:00"
    assert "runner.slurm_node --check-port" in text  # every node checks the rendezvous before training
    assert "NCCL_SOCKET_IFNAME=" not in text  # detected on each node, never a fixed name
    assert "/lab/weights/rdt-1b" in text and "/lab/converted/move_banana_to_box" in text
    {"docker": lambda: "--env MASTER_ADDR --env MASTER_PORT" in text and "--network host" in text,
     "pyxis": lambda: "--container-image=robo-runner/rdt:1" in text and ":/weights/rdt:ro" in text,
     "apptainer": lambda: "apptainer exec --nv" in text and "/lab/rdt.sif" in text}[runtime]()


def test_gpus_port_and_image_follow_the_allocation_not_the_workstation(machine: Machine,
                                                                      write_job: Callable[..., Path]) -> None:
    job = load_job(write_job("name: ws\npolicy: dp3\nresources: {gpus: [3]}\n"
                             "slurm: {image_cache: /shared/images}\nsteps: {train: }\n"), {})
    plan = build_plan(job, "train", machine, run_id="r1", image="robo-runner/dp3:abc", executor="slurm")
    text = render_sbatch(job, plan, machine.python)
    assert "#SBATCH --gpus-per-node=1" in text
    # the GPUs Slurm allocated on the node (host ids), never the workstation's device=3
    assert '--gpus "\\"device=${SLURM_STEP_GPUS:-${SLURM_JOB_GPUS:-}}\\""' in text and "device=3" not in text
    assert "runner.slurm_node --free-port" in text and "SLURM_JOB_ID % 20000" not in text
    assert "docker load -q -i /shared/images/robo-runner_dp3_abc.tar" in text and "'robo-runner/dp3:abc'" not in text
    local = load_job(write_job("name: wl\npolicy: dp3\nresources: {gpus: [3]}\nslurm: {runtime: local}\n"
                               "steps: {train: }\n", "wl.yaml"), {})
    text = render_sbatch(local, build_plan(local, "train", machine, run_id="r1", image="", executor="slurm"),
                         machine.python)
    assert "CUDA_VISIBLE_DEVICES" not in text  # Slurm sets it on the node


def test_free_port_pair_is_free() -> None:
    import socket

    from runner.slurm_node import free_port_pair

    port = free_port_pair()
    for p in (port, port + 1):
        with socket.socket() as s:
            s.bind(("", p))


def _slurm() -> None:
    if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        if os.environ.get("RUNNER_REQUIRE", "") and "slurm" in os.environ["RUNNER_REQUIRE"]:
            pytest.fail("Slurm is required here (RUNNER_REQUIRE) but sinfo fails: run .ci/setup-slurm.sh")
        pytest.skip("no running Slurm (.ci/setup-slurm.sh starts one)")


def _job(cwd: Path, name: str, runtime: str = "local", image_cache: Path | None = None, **train: object) -> None:
    spec = yaml.safe_load((REPO / "jobs" / "sample_dp3.yaml").read_text())
    slurm = {"runtime": runtime, "grace_s": 30, "max_requeues": 2}
    if image_cache:  # the nodes load the image from a folder they all see (here: this machine's)
        slurm["image_cache"] = str(image_cache)
    spec.update(name=name, executor="slurm", slurm=slurm)
    spec["steps"]["train"].update(train)
    (cwd / "jobs").mkdir(exist_ok=True)
    (cwd / "jobs" / f"{name}.yaml").write_text(yaml.safe_dump(spec))


def _runner(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(path_glob: Callable[[], list[Path]], text: str, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in path_glob():
            if text in p.read_text(errors="replace"):
                return p
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never appeared")


def _submitted(proc: subprocess.Popen[str], runs: Path, timeout: float) -> str:
    """The Slurm job id of the newest run's train step once `runner submit` has handed it to sbatch. The first
    Docker-runtime submit of a session first saves the image into slurm.image_cache (~1.8 GB: 7 minutes on a slow
    CI machine), so it gets its own limit, not the training's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in sorted(runs.glob("*/run.json")):
            steps = json.loads(record.read_text()).get("steps", [])
            job_id = next((st.get("handle", {}).get("job_id") for st in steps if st["name"] == "train"), None)
            if job_id:
                return str(job_id)
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"runner submit exited {proc.returncode} before submitting:\n{out}")
        time.sleep(0.5)
    raise AssertionError("runner submit never handed the step to sbatch")


@pytest.mark.slurm
@pytest.mark.parametrize("runtime", ["local", pytest.param("docker", marks=[pytest.mark.docker, pytest.mark.slow])])
def test_preempted_training_checkpoints_requeues_and_resumes(tmp_path: Path, runtime: str,
                                                             request: pytest.FixtureRequest) -> None:
    _slurm()
    cache = request.getfixturevalue("slurm_image_cache") if runtime == "docker" else None
    _job(tmp_path, "preempt", runtime, cache, epochs=40, checkpoint_every=1000)
    conv = _runner("convert", "preempt", "--executor", "local", cwd=tmp_path)
    assert conv.wait(timeout=300) == 0, conv.stdout.read() if conv.stdout else ""
    proc = _runner("submit", "preempt", "train", cwd=tmp_path)
    logs = lambda: list((tmp_path / "runs/preempt").glob("*/train.log"))  # noqa: E731
    job_id = _submitted(proc, tmp_path / "runs/preempt", timeout=1200)
    first = _wait_for(logs, "train: step 30/")
    record = json.loads((first.parent / "run.json").read_text())
    assert next(s for s in record["steps"] if s["name"] == "train")["handle"]["job_id"] == job_id
    subprocess.run(["scancel", "--signal=USR2", "--batch", job_id], check=True)  # what Slurm sends before preemption
    log = _wait_for(logs, "train: resumed from", timeout=400)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    text = log.read_text()
    stopped = int(text.split("stopped (SIGTERM) at step ")[1].split(";")[0])
    assert f"at step {stopped} " in text.split("train: resumed from")[1]  # continues at the saved step
    batch_out = next(log.parent.glob(f"slurm-{job_id}.out")).read_text()
    assert "requeue 1 of 2" in batch_out and "restart 1" in batch_out
    steps = [json.loads(line)["step"] for line in (log.parent / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] > stopped  # metrics continue, they do not restart
    final = json.loads((log.parent / "run.json").read_text())
    assert final["status"] == "succeeded" and final["executor"] == "slurm"
    assert final["steps"][0]["requeues"] == 1  # recorded in the run record too
    if runtime == "docker":
        assert final["image"]["tag"].startswith("robo-runner/dp3:")  # built at submit, not an empty reference
        assert list(cache.glob("robo-runner_dp3_*.tar"))  # saved once for the nodes
        assert "--gpus" not in (log.parent / "train.sbatch").read_text()  # no GPUs allocated, none asked


@pytest.mark.slurm
def test_real_error_is_not_requeued(tmp_path: Path) -> None:
    _slurm()
    _job(tmp_path, "broken", state_dim=14)  # the data has 8: refused before the model is built
    conv = _runner("convert", "broken", "--executor", "local", cwd=tmp_path)
    assert conv.wait(timeout=300) == 0
    proc = _runner("submit", "broken", "train", cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "state_dim" in out
    run_dir = next((tmp_path / "runs/broken").glob("*/train.sbatch")).parent
    batch_out = next(run_dir.glob("slurm-*.out")).read_text()
    assert "step exited with 2" in batch_out and "requeue" not in batch_out.replace("--requeue", "")


@pytest.mark.slurm
def test_runner_stop_cancels_a_slurm_run(tmp_path: Path) -> None:
    _slurm()
    _job(tmp_path, "cancelme", epochs=400, checkpoint_every=1000)
    conv = _runner("convert", "cancelme", "--executor", "local", cwd=tmp_path)
    assert conv.wait(timeout=300) == 0
    proc = _runner("submit", "cancelme", "train", cwd=tmp_path)
    log = _wait_for(lambda: list((tmp_path / "runs/cancelme").glob("*/train.log")), "train: step 10/")
    ps = subprocess.run([sys.executable, "-m", "runner.cli", "ps"], cwd=tmp_path, capture_output=True, text=True,
                        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "cancelme" in ps.stdout and "slurm" in ps.stdout
    stop = subprocess.run([sys.executable, "-m", "runner.cli", "stop", "cancelme"], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert stop.returncode == 0 and "stopped cancelme" in stop.stdout, stop.stdout + stop.stderr
    out, _ = proc.communicate(timeout=300)
    record = json.loads((log.parent / "run.json").read_text())
    job_id = record["steps"][0]["handle"]["job_id"]
    assert record["status"] == "interrupted", out
    assert subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip() == ""
    assert "stopped (SIGTERM)" in log.read_text()  # scancel's SIGTERM: the step saved a checkpoint first


def test_node_helper_finds_the_route_and_checks_the_rendezvous() -> None:
    import socket
    import threading

    from runner.slurm_node import check_reach, route_interface

    if shutil.which("ip") is None:
        pytest.skip("no `ip` command here")
    assert route_interface("127.0.0.1") == "lo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results: dict[int, str | None] = {}
    rank0 = threading.Thread(target=lambda: results.__setitem__(0, check_reach(0, 2, "127.0.0.1", port, 10)))
    rank0.start()
    time.sleep(0.2)
    results[1] = check_reach(1, 2, "127.0.0.1", port, 10)
    rank0.join()
    assert results == {0: None, 1: None}
    problem = check_reach(1, 2, "127.0.0.1", port, 2)  # nobody listens any more
    assert problem is not None and f"cannot reach 127.0.0.1:{port}" in problem


def test_every_node_checks_it_sees_the_code_run_folder_and_data(write_job: Callable[..., Path], tmp_path: Path) -> None:
    """Nodes see the code and the run folder only through shared storage: a node that does not is named, with the
    path, before any step starts (here: the preflight run on this machine, as srun runs it on each node)."""
    (tmp_path / "conv").mkdir()
    job = load_job(write_job("name: vis\npolicy: dp3\ndata: {converted: " + str(tmp_path / "conv") + "}\n"
                             "slurm: {runtime: local}\nsteps: {train: }\n"), {})
    machine = gather_machine(os.environ)  # this checkout's code folder, which exists here
    plan = build_plan(job, "train", machine, run_id="r1", image="", executor="slurm")
    text = render_sbatch(job, plan, machine.python)
    assert "srun --ntasks-per-node=1 bash -c" in text and 'scancel --signal=TERM "$SLURM_JOB_ID.1"' in text
    plan.run_dir.mkdir(parents=True)
    ok = subprocess.run(["bash", "-c", node_check(plan, "local", None)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "conv").rmdir()
    gone = subprocess.run(["bash", "-c", node_check(plan, "local", None)], capture_output=True, text=True, check=False)
    assert gone.returncode == 2
    assert f"cannot see {tmp_path / 'conv'} (mounted at /data/converted): every node needs it at the same path" in gone.stderr
    assert socket.gethostname() in gone.stderr


def test_on_the_master_node_the_interface_is_the_one_carrying_its_address_not_lo() -> None:
    """`ip route get` of the node's own address says `local ... dev lo`; the other nodes reach it through the
    interface that carries the address, which NCCL and gloo must use there."""
    from runner.netif import read_interfaces
    from runner.slurm_node import route_interface

    if shutil.which("ip") is None:
        pytest.skip("no `ip` command here")
    own = [i for i in read_interfaces() if i.up and not i.loopback and i.ipv4]
    if not own:
        pytest.skip("no non-loopback IPv4 address here")
    for i in own:
        assert route_interface(str(i.ipv4)) == i.name


def test_apptainer_gets_the_node_values_through_its_clean_environment(tmp_path: Path) -> None:
    """`apptainer exec --containall` drops the caller's environment: the node helper hands MASTER_ADDR and the rest
    over as APPTAINERENV_*, which Apptainer sets inside."""
    fake = tmp_path / "apptainer"
    fake.write_text("#!/bin/sh\nenv | grep '^APPTAINERENV_' | sort\n")
    fake.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400",
           "RUNNER_NUM_MACHINES": "1", "SLURM_NODEID": "0"}
    out = subprocess.run([sys.executable, "-m", "runner.slurm_node", "--", str(fake), "exec", "img"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "APPTAINERENV_MASTER_ADDR=127.0.0.1" in out and "APPTAINERENV_MASTER_PORT=29400" in out
    assert "APPTAINERENV_NCCL_SOCKET_IFNAME=lo" in out and "APPTAINERENV_PET_NODE_RANK=0" in out


@pytest.mark.parametrize(("runtime", "slurm", "expect"), [
    ("docker", "registry: registry.lab:5000/rr", ["docker pull -q registry.lab:5000/rr/robo-runner/rdt:1",
                                                 "registry.lab:5000/rr/robo-runner/rdt:1 python3 -m runner.inside"]),
    ("pyxis", "registry: registry.lab:5000/rr", ["--container-image='registry.lab:5000#rr/robo-runner/rdt:1'"]),
    ("apptainer", "registry: registry.lab:5000/rr", ["docker://registry.lab:5000/rr/robo-runner/rdt:1 python3"]),
    ("pyxis", "image_cache: /lab/images", ["--container-image=/lab/images/robo-runner_rdt_1.sqsh"]),
    ("apptainer", "image_cache: /lab/images", ["/lab/images/robo-runner_rdt_1.sif python3 -m runner.inside"]),
    ("apptainer", "{}", ["docker-daemon://robo-runner/rdt:1 python3"]),
    ("docker", "image_cache: /lab/images", ["docker load -q -i /lab/images/robo-runner_rdt_1.tar"]),
])
def test_each_runtime_runs_the_image_where_the_nodes_get_it(runtime: str, slurm: str, expect: list[str],
                                                            machine: Machine, write_job: Callable[..., Path]) -> None:
    text = MULTI.replace("RUNTIME", runtime).replace(", apptainer_image: /lab/rdt.sif", "")
    text = text.replace("runtime: ", f"{slurm.strip('{}')}, runtime: " if slurm != "{}" else "runtime: ")
    job = load_job(write_job(text), {})
    plan = build_plan(job, "train", machine, run_id="r1", image="robo-runner/rdt:1", executor="slurm")
    script = render_sbatch(job, plan, machine.python)
    for line in expect:
        assert line in script, line


def test_registry_and_image_cache_are_one_or_the_other(write_job: Callable[..., Path]) -> None:
    from runner.errors import SpecError

    with pytest.raises(SpecError, match=r"slurm\.registry and slurm\.image_cache both say how the nodes get the image"):
        load_job(write_job("name: x\npolicy: dp3\nslurm: {registry: 'r.lab:5000/x', image_cache: /lab/c}\n"), {})
    with pytest.raises(SpecError, match="registry"):
        load_job(write_job("name: x\npolicy: dp3\nslurm: {registry: 'https://r.lab/x'}\n"), {})


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
def test_squashfs_and_sif_are_made_once_per_tag_into_the_cache(runtime: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """pyxis and Apptainer run a file from the shared cache, made here at submit by enroot / apptainer (stand-ins
    that record their arguments and write the file), under a temp name and renamed; an existing one is reused."""
    from runner.executors.slurm import SlurmError, cache_image
    from runner.slurm import cache_file

    tools = tmp_path / "bin"
    tools.mkdir()
    tool = "enroot" if runtime == "pyxis" else "apptainer"
    calls = tmp_path / "calls"
    out_arg = '"$3"' if runtime == "pyxis" else '"$2"'
    (tools / tool).write_text(f'#!/bin/sh\necho "$@" >> {calls}\nprintf image > {out_arg}\n')
    (tools / tool).chmod(0o755)
    cache = tmp_path / "cache"
    said: list[str] = []
    monkeypatch.setenv("PATH", str(tools), prepend=os.pathsep)
    cache_image(None, "robo-runner/dp3:abc", cache, runtime, said.append)
    target = cache_file(cache, "robo-runner/dp3:abc", runtime)
    assert target.read_text() == "image" and [p.name for p in cache.iterdir()] == [target.name]  # no temp left
    argv = calls.read_text().split()
    assert argv[-1] in ("dockerd://robo-runner/dp3:abc", "docker-daemon://robo-runner/dp3:abc")
    cache_image(None, "robo-runner/dp3:abc", cache, runtime, said.append)
    assert len(calls.read_text().splitlines()) == 1 and "already in" in said[-1]  # made once per tag
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SlurmError, match=f"with {tool}, which this machine lacks"):
        cache_image(None, "robo-runner/dp3:new", cache, runtime, said.append)


@pytest.mark.docker
def test_registry_push_once_and_a_node_pulls(tmp_path: Path) -> None:
    """Against a real registry (Debian's docker-registry, `.ci/setup-registry.sh`): the image is pushed under its
    content tag, not again when the registry has it; a node without it pulls it; an unreachable registry is named."""
    import docker

    from runner.executors.slurm import SlurmError, push_image
    from runner.slurm import image_check

    if os.geteuid() != 0 and "docker" not in os.environ.get("RUNNER_REQUIRE", ""):
        pytest.skip("starting the test registry needs root")
    r = subprocess.run(["bash", str(REPO / ".ci" / "setup-registry.sh")], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    client = docker.from_env()
    tag = "robo-runner/os:bookworm"  # the small local base image stands in for a policy image
    ref = f"localhost:5000/rr-test-{os.getpid()}/{tag}"
    said: list[str] = []
    push_image(client, tag, ref, said.append)
    assert said == [f"pushing image {ref} for the Slurm nodes"]
    push_image(client, tag, ref, said.append)
    assert said[-1] == f"image {ref} already in the registry"
    client.images.remove(ref)  # a node that lacks it
    check = subprocess.run(["bash", "-c", image_check(ref, None, registry=True)], capture_output=True, text=True)
    assert check.returncode == 0 and "pulling" in check.stdout, check.stderr
    assert client.images.get(ref).id == client.images.get(tag).id
    bad = subprocess.run(["bash", "-c", image_check("localhost:5999/x/y:1", None, registry=True)], capture_output=True,
                         text=True)
    assert bad.returncode == 125 and "cannot pull localhost:5999/x/y:1: is the registry reachable" in bad.stderr
    with pytest.raises(SlurmError, match="localhost:5999"):
        push_image(client, tag, "localhost:5999/x/" + tag, said.append)
    client.images.remove(ref)
    client.images.remove("localhost:5999/x/" + tag)
