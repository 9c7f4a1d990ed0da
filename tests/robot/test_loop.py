"""The control loop on its own: robot/ imports no policy, and a fake adapter's chunks reach a simulated Franka
over GELLO's ZMQ protocol, in order and within the per-step limit (the policies' adapters are tested in
tests/policies/test_deployment.py)."""

from __future__ import annotations

import ast
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from robot import loop
from robot.loop import LoopConfig, run_loop
from robot.protocol import PolicyAdapter
from robot.safety import Limits
from robot.sim import SimFranka
from robot.zmq_link import ZmqRobotClient, ZmqRobotServer

ROBOT = Path(__file__).resolve().parents[2] / "robot"


def test_robot_imports_no_policy() -> None:
    found = []
    for path in sorted(ROBOT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names if n == "policies" or n.startswith("policies.")]
    assert found == []
    assert len(list(ROBOT.glob("*.py"))) >= 8  # the scan saw the package


class Creep:
    """A fake policy: each chunk moves joint 0 by `step` rad an action from the newest observed pose."""

    kind, window, chunk = "fake", 2, 4

    def __init__(self, step: float) -> None:
        self.step, self.calls = step, 0

    def observation(self, joints: np.ndarray, rgb: np.ndarray, depth: np.ndarray) -> dict[str, Any]:
        return {"q": joints.astype(np.float64)}

    def act(self, window: list[dict[str, Any]]) -> np.ndarray:
        self.calls += 1
        assert 1 <= len(window) <= self.window
        q = window[-1]["q"]
        return np.stack([q + np.eye(8)[0] * self.step * (k + 1) for k in range(self.chunk)])


class StillCamera:
    def read(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint16)


@contextlib.contextmanager
def sim_link() -> Iterator[tuple[SimFranka, ZmqRobotClient]]:
    """A simulated Franka served over GELLO's ZMQ protocol on a free port, and a client of it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    sim = SimFranka()
    server = ZmqRobotServer(sim, port).start()
    client = ZmqRobotClient("127.0.0.1", port, 1000)
    try:
        yield sim, client
    finally:
        client.close()
        server.stop()


def test_a_fake_policy_drives_the_sim_in_order_within_limits() -> None:
    adapter = Creep(0.004)
    policy: PolicyAdapter = adapter  # the protocol the loop takes
    with sim_link() as (sim, client):
        start = sim.get_joint_state().copy()
        report = run_loop(client, StillCamera(), policy, LoopConfig(hz=20, duration_s=1.5, limits=Limits(max_delta=0.01)),
                          threading.Event())
    assert report.stopped_by.startswith("duration") and report.sent >= 20 and adapter.calls >= 2
    joint0 = np.array([c[0] for c in sim.commands])
    assert np.all(np.diff(joint0) > -1e-9)  # creeping one way only
    assert np.all(np.abs(np.diff(joint0)) <= 0.01 + 1e-9)  # never more than max_delta a step
    assert joint0[-1] > start[0] + 0.02  # it moved
    assert np.allclose(np.array(sim.commands)[:, 1:7], start[1:7], atol=1e-6)  # and nothing else did


class Slow(Creep):
    """Each chunk takes `seconds`, or until `release` is set when one is given (a hung policy)."""

    def __init__(self, seconds: float, release: threading.Event | None = None) -> None:
        super().__init__(0.0)
        self.seconds, self.release = seconds, release

    def act(self, window: list[dict[str, Any]]) -> np.ndarray:
        if self.release is not None:
            self.release.wait()
        else:
            time.sleep(self.seconds)
        return super().act(window)


def loop_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ("inference", "camera")]


def test_the_loop_returns_only_once_its_inference_and_camera_threads_have_ended() -> None:
    """A process that exits while the inference thread is inside torch can abort (the deploy step exited 134)."""
    adapter = Slow(0.4)  # a chunk is in flight when the duration ends
    with sim_link() as (_, client):
        report = run_loop(client, StillCamera(), adapter, LoopConfig(hz=20, duration_s=0.5), threading.Event())
    assert report.stopped_by.startswith("duration") and adapter.calls >= 2
    assert loop_threads() == [] and report.unfinished == []
    assert not any("thread(s) still ran" in line for line in report.summary(20))


def test_a_hung_policy_is_named_and_the_loop_still_returns(monkeypatch: Any) -> None:
    monkeypatch.setattr(loop, "JOIN_S", 0.3)
    release = threading.Event()
    with sim_link() as (_, client):
        t0 = time.monotonic()
        report = run_loop(client, StillCamera(), Slow(0.0, release), LoopConfig(hz=20, duration_s=0.5),
                          threading.Event())
        waited = time.monotonic() - t0
    try:
        assert report.unfinished == ["inference"] and waited < 10
        assert any(line.startswith("warning: the inference thread(s) still ran 0.3 s after the stop")
                   for line in report.summary(20))
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while loop_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loop_threads() == []
