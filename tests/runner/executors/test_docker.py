"""Against a real Docker engine (started by .ci/run / `make setup`): build, run, mounts, shm, env, ownership,
logs, exit codes, stop. Uses the local base image robo-runner/os:bookworm, no registry."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from runner import records
from runner.orchestrate import Orchestrator, RunRequest, exit_code_of
from runner.spec.load import LoadedJob, load_job

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    import docker

    c = docker.from_env()
    yield c
    for cont in c.containers.list(all=True, filters={"label": "runner.test=1"}):
        cont.remove(force=True)


def _job(tmp_path: Path, body: str, name: str) -> LoadedJob:
    (tmp_path / "jobs").mkdir(exist_ok=True)
    path = tmp_path / "jobs" / f"{name}.yaml"
    path.write_text(textwrap.dedent(body))
    return load_job(path, os.environ)


def _orchestrator(out: io.BytesIO, uid: int | None = None, code: Path | None = None) -> Orchestrator:
    orch = Orchestrator(os.environ, lambda m: None, out=out)  # type: ignore[arg-type]
    if uid is not None:
        orch.machine = replace(orch.machine, uid=uid, gid=uid)
    if code is not None:
        orch.machine = replace(orch.machine, code_dir=code)
    return orch


def _code_copy(tmp_path: Path) -> Path:
    """The runner's code where any uid can read it (a checkout may sit in a 0700 folder)."""
    import shutil

    code = tmp_path / "code"
    for pkg in ("runner", "policies"):
        shutil.copytree(REPO / pkg, code / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for p in [code, *code.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return code


def test_build_then_noop_rebuild(tmp_path: Path, client: object) -> None:
    from runner.executors.docker_build import ensure_image
    from runner.images import plan_image

    job = _job(tmp_path, f"""\
        name: build-test
        policy: command
        image:
          build_args: {{RR_TEST_NONCE: "{uuid.uuid4().hex}"}}
        steps: {{s: {{command: "true"}}}}
        """, "build")
    plan = plan_image(job.spec.image, job.policy, os.environ)
    log = tmp_path / "build.log"
    first = ensure_image(client, plan, log, io.BytesIO())
    try:
        assert first.built and "Successfully tagged" in log.read_text()
        t0 = time.perf_counter()
        again = ensure_image(client, plan_image(job.spec.image, job.policy, os.environ), log, io.BytesIO())
        assert not again.built and again.id == first.id
        assert time.perf_counter() - t0 < 2.0
        # pip in the build reached the index through the host's CA bundle and found pyyaml.
        out = client.containers.run(first.tag, ["python3", "-c", "import yaml; print(yaml.__version__)"],  # type: ignore[attr-defined]
                                    remove=True, labels={"runner.test": "1"})
        assert out.decode().startswith("6.")
    finally:
        client.images.remove(first.tag, force=True)  # type: ignore[attr-defined]


CHECKS = r"""
import os, json, pathlib
st = os.statvfs("/dev/shm")
def writable(p):
    try:
        pathlib.Path(p, ".probe").write_text("x"); os.remove(os.path.join(p, ".probe")); return True
    except OSError:
        return False
out = pathlib.Path("/out/result.json")
out.write_text(json.dumps({
    "shm": st.f_blocks * st.f_frsize, "in_rw": writable("/in"), "out_rw": writable("/out"),
    "code_rw": writable("/opt/robo-runner"), "job_rw": writable("/job"), "greeting": os.environ.get("GREETING"),
    "nvls": os.environ.get("NCCL_NVLS_ENABLE"), "ifname": os.environ.get("NCCL_SOCKET_IFNAME"),
    "secret": os.environ.get("API_TOKEN"), "input": pathlib.Path("/in/data.txt").read_text(), "uid": os.getuid(),
}))
print("checks written")
"""


def test_step_runs_in_the_container_as_rendered(tmp_path: Path, client: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("RR_TEST_TOKEN", "tok-123")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.txt").write_text("demo")
    (tmp_path / "checks.py").write_text(CHECKS)
    os.chmod(tmp_path, 0o755)
    job = _job(tmp_path, """\
        name: dock-test
        policy: command
        resources: {shm: 96m}
        env: {GREETING: hi, API_TOKEN: "${oc.env:RR_TEST_TOKEN}"}
        mounts:
          - {source: in, target: /in}
          - {source: out, target: /out, read_only: false}
          - {source: checks.py, target: /checks.py}
        steps:
          check: {command: [python3, /checks.py]}
          fail: {command: "echo failing now; exit 7"}
        """, "dock")
    (tmp_path / "out").mkdir()
    os.chmod(tmp_path / "out", 0o777)
    out = io.BytesIO()
    # The test runs as root but the container as uid 4321: let that user write the run folder, as the
    # calling user could write their own.
    old = os.umask(0)
    try:
        rec = _orchestrator(out, uid=4321, code=_code_copy(tmp_path)).run(RunRequest(job))
    finally:
        os.umask(old)
    assert [s.status for s in rec.steps] == ["succeeded", "failed"]
    assert exit_code_of(rec) == 7
    got = json.loads((tmp_path / "out" / "result.json").read_text())
    assert got["shm"] == 96 * 1024**2
    assert (got["in_rw"], got["out_rw"], got["code_rw"], got["job_rw"]) == (False, True, False, True)
    assert (got["greeting"], got["nvls"], got["ifname"], got["secret"]) == ("hi", "0", "lo", "tok-123")
    assert got["input"] == "demo" and got["uid"] == 4321
    assert (tmp_path / "out" / "result.json").stat().st_uid == 4321  # not root-owned
    run_dir = tmp_path / "runs" / "dock-test" / rec.run_id
    assert "checks written" in (run_dir / "check.log").read_text()
    assert "failing now" in (run_dir / "fail.log").read_text()
    assert b"checks written" in out.getvalue()
    assert "tok-123" not in (run_dir / "run.json").read_text()
    assert rec.image["tag"].startswith("robo-runner/base:")
    assert not client.containers.list(all=True, filters={"label": "runner.job=dock-test"})  # type: ignore[attr-defined]


def _wait(cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_ctrl_c_stops_the_container_and_records_interrupted(tmp_path: Path, client: object) -> None:
    job = _job(tmp_path, """\
        name: dock-stop
        policy: command
        steps: {long: {command: "echo started; sleep 300"}}
        """, "dock-stop")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", str(job.file)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        logs = lambda: list((tmp_path / "runs" / "dock-stop").glob("*/long.log"))  # noqa: E731
        _wait(lambda: bool(logs()) and "started" in logs()[0].read_text())
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 20  # sleep got SIGTERM at once; no wait for the SIGKILL grace
    rec = records.load(logs()[0].parent / "run.json")
    assert rec.status == "interrupted" and rec.steps[0].exit_code == 143
    # this run's container is gone (by run id: a runner killed in an earlier run of the suite may have left one)
    mine = {"label": f"runner.run_id={logs()[0].parent.name}"}
    assert not client.containers.list(all=True, filters=mine)  # type: ignore[attr-defined]


def test_host_oom_is_diagnosed(tmp_path: Path, client: object) -> None:
    job = _job(tmp_path, """\
        name: dock-oom
        policy: command
        resources: {memory: 64m}
        steps: {hog: {command: [python3, -c, "x = bytearray(512 * 1024 * 1024); print(len(x))"]}}
        """, "dock-oom")
    rec = _orchestrator(io.BytesIO()).run(RunRequest(job))
    step = rec.steps[0]
    assert step.status == "failed" and step.exit_code == 137
    assert step.diagnosis and step.diagnosis["kind"] == "host_oom"


@pytest.mark.slow
def test_sample_convert_runs_in_the_dp3_image(tmp_path: Path, client: object) -> None:
    """`runner convert` inside the real DP3 image (torch, h5py, zarr 2), as the README's first command does."""
    import shutil

    import zarr

    (tmp_path / "jobs").mkdir()
    shutil.copy(REPO / "jobs" / "sample_dp3.yaml", tmp_path / "jobs")
    job = load_job(tmp_path / "jobs" / "sample_dp3.yaml", os.environ)
    out = io.BytesIO()
    rec = _orchestrator(out).run(RunRequest(job, ["convert"]))
    assert rec.steps[0].status == "succeeded", out.getvalue().decode()[-2000:]
    assert rec.image["tag"].startswith("robo-runner/dp3:")
    buf = zarr.open(str(tmp_path / "sample_data/converted/sample_pick-demo_clean-3.zarr"), "r")
    assert buf["data/state"].shape == (147, 8) and buf["data/point_cloud"].shape == (147, 256, 6)
    # the step runs in the container but names the host path (its output is rewritten through the mounts)
    assert f"DP3 replay buffer {tmp_path}/sample_data/converted/".encode() in out.getvalue()
