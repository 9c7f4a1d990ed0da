"""Two Slurm nodes on this machine, each with its own network address and hostname (`.ci/setup-slurm-2node.sh`:
rrnode1 on a bridge in this host's network, rrnode2 in a network namespace with its own Docker engine). A 2-node DP3
DDP training on CPU (gloo) goes through `runner submit` with the default Docker runtime; the second node starts
without the image and loads it from the shared cache. A node that cannot reach the rendezvous fails naming itself
and its interface."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / ".ci" / "setup-slurm-2node.sh"
NODE2_DOCKER = "unix:///run/rr-docker2.sock"
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """The two-node cluster's client environment (SLURM_CONF), started when needed."""
    required = "slurm" in os.environ.get("RUNNER_REQUIRE", "")
    why = None
    if os.geteuid() != 0:
        why = "the two-node cluster needs root (network namespaces; the script installs iproute2 when missing)"
    elif shutil.which("slurmctld") is None:
        why = "no Slurm here (.ci/setup-slurm.sh installs it)"
    if why:
        if required:
            pytest.fail(f"Slurm is required here (RUNNER_REQUIRE) but {why}")
        pytest.skip(why)
    r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    yield {**os.environ, "PYTHONPATH": str(REPO), "SLURM_CONF": "/tmp/rr-slurm2/slurm.conf"}


def _job(cwd: Path, name: str, runtime: str, **slurm: object) -> None:
    spec = yaml.safe_load((REPO / "jobs" / "sample_dp3.yaml").read_text())
    spec.update(name=name, executor="slurm", slurm={"runtime": runtime, "grace_s": 30, **slurm})
    spec["data"] = {"raw": str(cwd / "raw"), "converted": str(cwd / "converted")}
    spec["resources"]["nodes"] = 2
    spec["steps"]["train"].update(epochs=3, checkpoint_every=1000)
    (cwd / "jobs").mkdir(exist_ok=True)
    (cwd / "jobs" / f"{name}.yaml").write_text(yaml.safe_dump(spec))


def _runner(cwd: Path, env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _convert(cwd: Path, env: dict[str, str], name: str) -> None:
    conv = _runner(cwd, env, "convert", name, "--executor", "local", timeout=300)
    assert conv.returncode == 0, conv.stdout + conv.stderr


def _run_dir(cwd: Path, name: str) -> Path:
    return next((cwd / "runs" / name).glob("*/train.sbatch")).parent


@pytest.mark.docker
def test_two_node_dp3_training_with_docker_runtime(cluster: dict[str, str], tmp_path: Path,
                                                  slurm_image_cache: Path) -> None:
    _job(tmp_path, "two", "docker", image_cache=str(slurm_image_cache))
    _convert(tmp_path, cluster, "two")
    node2 = {**cluster, "DOCKER_HOST": NODE2_DOCKER}
    images = subprocess.run(["docker", "images", "-q", "robo-runner/dp3"], env=node2, capture_output=True, text=True,
                            check=True).stdout.split()
    if images:  # the second node starts without the image, as a fresh machine would
        subprocess.run(["docker", "rmi", "-f", *images], env=node2, capture_output=True, check=True)

    out = _runner(tmp_path, cluster, "submit", "two", "train")
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = _run_dir(tmp_path, "two")
    record = json.loads((run_dir / "run.json").read_text())
    job_id = record["steps"][0]["handle"]["job_id"]
    tag = record["image"]["tag"]
    batch = (run_dir / f"slurm-{job_id}.out").read_text()
    log = (run_dir / "train.log").read_text()
    assert "on rrnode[1-2], restart 0, rendezvous rrnode1:" in batch  # MASTER_ADDR: the first node
    # The second node had no image: it loaded it from the shared cache; the first (where it was built) did not.
    assert f"[runner] node rrnode2: loading {tag} from {slurm_image_cache}" in batch
    assert "node rrnode1: loading" not in batch
    # Each node's rank, and the interface that routes to the master on that node (never lo).
    assert "[runner] node rrnode1: rank 0 of 2, NCCL_SOCKET_IFNAME=rrbr0 (routes to rrnode1)" in batch
    assert "[runner] node rrnode2: rank 1 of 2, NCCL_SOCKET_IFNAME=eth0 (routes to rrnode1)" in batch
    # One DDP training across the two nodes (gloo on CPU): two processes, one lineage note, rank 0's checkpoint.
    assert "device cpu, 2 processes (batch 32 split across them)" in log
    assert log.count("train: a new lineage") == 1
    assert "step exited with code 0 on node rrnode1" in log and "step exited with code 0 on node rrnode2" in log
    assert record["status"] == "succeeded" and record["executor"] == "slurm"
    assert len(list((tmp_path / "runs/two/checkpoints").glob("*/step-12.ckpt"))) == 1
    # The containers ran in each node's own network (host network of that node), as multi-node training needs.
    assert "--network host" in (run_dir / "train.sbatch").read_text()


def test_a_node_that_cannot_reach_the_master_fails_naming_node_and_interface(cluster: dict[str, str],
                                                                            tmp_path: Path) -> None:
    port = 29611
    _job(tmp_path, "cut", "local", port=port, reach_timeout_s=8)
    _convert(tmp_path, cluster, "cut")
    # A firewall on the second node drops its packets to the rendezvous check port of the first.
    rule = ["-A", "OUTPUT", "-d", "10.77.0.1", "-p", "tcp", "--dport", str(port + 1), "-j", "DROP"]
    ns = ["nsenter", "--net=/run/netns/rrn2", "iptables"]
    subprocess.run([*ns, *rule], check=True)
    try:
        out = _runner(tmp_path, cluster, "submit", "cut", "train", timeout=300)
    finally:
        subprocess.run([*ns, "-D", *rule[1:]], check=True)
    assert out.returncode != 0, out.stdout
    run_dir = _run_dir(tmp_path, "cut")
    batch = next(run_dir.glob("slurm-*.out")).read_text()
    # The node that cannot reach the master says so first (the master waits a little longer), naming itself, its
    # interface and the address it tried; Slurm then ends the step on every node.
    assert f"[runner] node rrnode2 (interface eth0): cannot reach rrnode1:{port + 1} within 8 s" in batch
    assert "rrnode2: task 1: Exited with exit code 2" in batch
    train_log = run_dir / "train.log"
    assert not train_log.exists() or "train: step" not in train_log.read_text(errors="replace")  # before training
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
