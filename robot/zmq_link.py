"""GELLO's robot and camera ZMQ protocol: a client that drives an existing GELLO server as it is, and a server
that puts any Robot (the simulated Franka in tests and dry runs) behind the same wire format.

Every reply is decoded with the restricted unpickler of the demo reader (numpy arrays and plain values only), and
the client talks only to the host and port the job names. A reply that does not come within the timeout raises
LinkTimeout, which the control loop treats as a stale observation.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import numpy as np
import zmq

from robot import safe_pickle
from robot.protocol import Robot


class LinkTimeout(TimeoutError):
    """No reply from the robot or camera server in time."""


class RobotServerError(RuntimeError):
    """The server answered with an error."""


class _Req:
    def __init__(self, host: str, port: int, timeout_ms: int, what: str) -> None:
        self.address, self.timeout_ms, self.what = f"tcp://{host}:{port}", timeout_ms, what
        self.ctx: Any = zmq.Context.instance()
        self._connect()

    def _connect(self) -> None:
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        self.sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        self.sock.connect(self.address)

    def call(self, payload: Any) -> Any:
        try:
            self.sock.send(pickle.dumps(payload))
            reply = self.sock.recv()
        except zmq.Again as e:
            # A REQ socket that missed its reply cannot send again: start a fresh one for the next call.
            self.sock.close()
            self._connect()
            msg = f"no reply from the {self.what} at {self.address} within {self.timeout_ms} ms"
            raise LinkTimeout(msg) from e
        try:
            return safe_pickle.loads(reply, f"reply from the {self.what} at {self.address}")
        except Exception as e:
            msg = f"unusable reply from the {self.what} at {self.address}: {type(e).__name__}: {e}"
            raise RobotServerError(msg) from e

    def close(self) -> None:
        self.sock.close()


class ZmqRobotClient:
    """GELLO's ZMQClientRobot: the Robot protocol over ZMQ REQ."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6001, timeout_ms: int = 1000) -> None:
        self.link = _Req(host, port, timeout_ms, "robot server")

    def _call(self, method: str, args: dict[str, Any] | None = None) -> Any:
        reply = self.link.call({"method": method, "args": args or {}})
        if isinstance(reply, dict) and "error" in reply and len(reply) == 1:
            msg = f"robot server {self.link.address}: {method}: {reply['error']}"
            raise RobotServerError(msg)
        return reply

    def num_dofs(self) -> int:
        reply = self._call("num_dofs")
        if isinstance(reply, bool) or not isinstance(reply, (int, np.integer)):
            msg = f"robot server {self.link.address}: num_dofs returned {reply!r}, not an integer"
            raise RobotServerError(msg)
        return int(reply)

    def get_joint_state(self) -> np.ndarray:
        return np.asarray(self._call("get_joint_state"), dtype=np.float64)

    def command_joint_state(self, joint_state: np.ndarray) -> None:
        self._call("command_joint_state", {"joint_state": np.asarray(joint_state, dtype=np.float64)})

    def get_observations(self) -> dict[str, Any]:
        obs = self._call("get_observations")
        if not isinstance(obs, dict):
            msg = f"robot server {self.link.address}: get_observations returned {type(obs).__name__}, not a dict"
            raise RobotServerError(msg)
        return obs

    def close(self) -> None:
        self.link.close()


class ZmqCameraClient:
    """GELLO's ZMQClientCamera: sends the wanted image size (or None), gets (rgb, depth)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5000, timeout_ms: int = 1000,
                 img_size: tuple[int, int] | None = None) -> None:
        self.link, self.img_size = _Req(host, port, timeout_ms, "camera server"), img_size

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        reply = self.link.call(self.img_size)
        if not (isinstance(reply, tuple) and len(reply) == 2):
            msg = f"camera server {self.link.address}: expected (image, depth), got {type(reply).__name__}"
            raise RobotServerError(msg)
        return np.asarray(reply[0]), np.asarray(reply[1])

    def close(self) -> None:
        self.link.close()


class ZmqRobotServer:
    """GELLO's ZMQServerRobot around any Robot, served from a thread (REP, 1 s receive timeout as upstream)."""

    def __init__(self, robot: Robot, port: int, host: str = "127.0.0.1") -> None:
        self.robot = robot
        self.ctx: Any = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.RCVTIMEO, 100)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(f"tcp://{host}:{port}")
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="zmq-robot-server", daemon=True)
        self.commands = 0

    def start(self) -> ZmqRobotServer:
        self.thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                request = self.sock.recv()
            except zmq.Again:
                continue
            try:
                req = safe_pickle.loads(request, "robot request")
                reply = self._dispatch(req["method"], req.get("args") or {})
            except Exception as e:  # noqa: BLE001 - every failure becomes an error reply, the server keeps going
                reply = {"error": f"{type(e).__name__}: {e}"}
            self.sock.send(pickle.dumps(reply))

    def _dispatch(self, method: str, args: dict[str, Any]) -> Any:
        if method == "num_dofs":
            return self.robot.num_dofs()
        if method == "get_joint_state":
            return self.robot.get_joint_state()
        if method == "command_joint_state":
            self.commands += 1
            self.robot.command_joint_state(args["joint_state"])
            return None
        if method == "get_observations":
            return self.robot.get_observations()
        return {"error": "Invalid method"}

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.sock.close()
