"""The fixed-rate control loop. Three threads: the camera keeps the newest frame; inference turns a snapshot of the
observation window into an action chunk; the control thread (the caller's) ticks at the job's rate, builds the
observation, picks the action for this tick from the newest chunk (aligned to the tick its observation came from;
optionally a temporal ensemble of all chunks covering the tick), applies the safety limits and sends the command.
A slow inference never stalls commands: the tick goes on with the chunk it has, and holds when it has none.

Every stop says why: Ctrl-C/SIGTERM (the stop event), an exception in inference, a camera that gives no new frame
within `stale_s`, a robot that does not answer (stale observation), the run's duration. After a stop nothing more
is sent: the arm holds the last commanded pose; the loop then waits for the inference and camera threads to end
(an action chunk in flight finishes), since a process that exits while a thread is inside torch can abort
("terminate called without an active exception").
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robot.formats import binarize
from robot.options import Deploy, GripperConvention
from robot.protocol import Camera, PolicyAdapter, Robot
from robot.recorder import Recorder
from robot.safety import Limits, check_observation, check_reading, decide
from robot.zmq_link import LinkTimeout, RobotServerError
from runner.spec.models import default_of

#: How long the loop waits, once stopped, for its inference and camera threads to end.
JOIN_S = 10.0


@dataclass(frozen=True)
class LoopConfig:
    hz: float
    duration_s: float | None = default_of(Deploy, "duration_s")
    dry_run: bool = default_of(Deploy, "dry_run")
    stale_s: float = default_of(Deploy, "stale_s")
    limits: Limits = field(default_factory=Limits)
    command_gripper: str = default_of(GripperConvention, "command_gripper")  # the robot's (GELLO Panda: 1.0 = closed)
    binarize_action_gripper: bool = default_of(GripperConvention, "binarize_gripper")
    gripper_threshold: float = default_of(GripperConvention, "gripper_threshold")
    ensemble: float | None = default_of(Deploy, "ensemble")  # weight k of exp(-k * age); None: newest chunk only


@dataclass
class LoopReport:
    stopped_by: str
    unfinished: list[str] = field(default_factory=list)  # threads still running JOIN_S after the stop
    steps: int = 0
    sent: int = 0
    limited: int = 0
    limited_by: dict[str, int] = field(default_factory=dict)  # which limit, how many commands
    starved: int = 0
    inference_ms: list[float] = field(default_factory=list)
    period_ms: list[float] = field(default_factory=list)

    def summary(self, hz: float) -> list[str]:
        def pct(xs: list[float], q: float) -> float:
            return float(np.percentile(xs, q)) if xs else float("nan")

        which = ", ".join(f"{k} {v}" for k, v in sorted(self.limited_by.items()))
        lines = [f"deploy: stopped: {self.stopped_by}",
                 f"deploy: {self.steps} control steps, {self.sent} commands sent, {self.limited} limited by safety"
                 + (f" ({which})" if which else "") + f", {self.starved} without an action (held)",
                 f"deploy: inference p50 {pct(self.inference_ms, 50):.1f} ms p99 {pct(self.inference_ms, 99):.1f} ms; "
                 f"loop period p50 {pct(self.period_ms, 50):.1f} ms p99 {pct(self.period_ms, 99):.1f} ms "
                 f"(target {1000 / hz:.1f} ms)"]
        if self.unfinished:
            lines.append(f"warning: the {', '.join(self.unfinished)} thread(s) still ran {JOIN_S:g} s after the stop "
                         "(a hung policy or camera); the process may not exit cleanly")
        if self.inference_ms and pct(self.inference_ms, 50) > 1000 / hz:
            lines.append(f"warning: inference ({pct(self.inference_ms, 50):.1f} ms p50) is slower than the control period "
                         f"({1000 / hz:.1f} ms): chunks are planned from older observations")
        return lines


class _Latest:
    """The newest camera frame and when it arrived, filled by a thread."""

    def __init__(self, camera: Camera, hz: float, stop: threading.Event) -> None:
        self.camera, self.period, self.stop = camera, 1.0 / hz, stop
        self.frame: tuple[np.ndarray, np.ndarray] | None = None
        self.t = 0.0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="camera", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                frame = self.camera.read()
            except Exception as e:  # noqa: BLE001 - reported by the control thread as the stop reason
                self.error = e
                return
            self.frame, self.t = frame, time.monotonic()
            time.sleep(max(0.0, self.period - (time.monotonic() - t0)))


class _Planner:
    """Runs the adapter's act() on request in its own thread; chunks come back tagged with their tick."""

    def __init__(self, act: Callable[[list[dict[str, Any]]], np.ndarray], stop: threading.Event) -> None:
        self.act, self.stop = act, stop
        self.request: tuple[int, list[dict[str, Any]]] | None = None
        self.ready: list[tuple[int, np.ndarray]] = []
        self.busy = False
        self.error: BaseException | None = None
        self.latencies: list[float] = []
        self.cv = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def ask(self, tick: int, window: list[dict[str, Any]]) -> None:
        with self.cv:
            self.request, self.busy = (tick, list(window)), True
            self.cv.notify()

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.cv:
                while self.request is None and not self.stop.is_set():
                    self.cv.wait(0.1)
                if self.request is None:
                    return
                tick, window = self.request
                self.request = None
            t0 = time.perf_counter()
            try:
                chunk = np.asarray(self.act(window), dtype=np.float64)
            except Exception as e:  # noqa: BLE001 - reported by the control thread as the stop reason
                self.error = e
                self.busy = False
                return
            self.latencies.append((time.perf_counter() - t0) * 1000)
            with self.cv:
                self.ready.append((tick, chunk))
                self.busy = False

    def take(self) -> list[tuple[int, np.ndarray]]:
        with self.cv:
            out, self.ready = self.ready, []
        return out


def run_loop(robot: Robot, camera: Camera, adapter: PolicyAdapter, cfg: LoopConfig, stop: threading.Event,
             recorder: Recorder | None = None) -> LoopReport:
    """Drive `robot` with `adapter`'s policy until `stop` is set or something goes wrong; returns the report."""
    run = _Run(robot, camera, adapter, cfg, stop, recorder)
    try:
        return _drive(run, cfg, stop)
    finally:
        stop.set()
        run.join()


def _drive(run: _Run, cfg: LoopConfig, stop: threading.Event) -> LoopReport:
    # Wait for the first frame and the first chunk before the clock starts: nothing moves until both exist.
    deadline = time.monotonic() + max(5.0, 10 * cfg.stale_s)
    while run.latest.frame is None and not stop.is_set():
        if run.latest.error is not None or time.monotonic() > deadline:
            return run.finish(f"camera: no first frame ({run.latest.error or 'timeout'})")
        time.sleep(0.005)
    period = 1.0 / cfg.hz
    next_t = time.monotonic()
    while True:
        now = time.monotonic()
        why = run.tick(now)
        if why:
            return run.finish(why)
        next_t += period
        delay = next_t - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            next_t = time.monotonic()  # behind: start the next period now rather than bursting to catch up


class _Run:
    """One deploy's state between ticks: the observation window, the chunks in hand, the last command."""

    def __init__(self, robot: Robot, camera: Camera, adapter: PolicyAdapter, cfg: LoopConfig, stop: threading.Event,
                 recorder: Recorder | None) -> None:
        self.robot, self.adapter, self.cfg, self.stop, self.recorder = robot, adapter, cfg, stop, recorder
        self.latest = _Latest(camera, max(cfg.hz, 1.0), stop)
        self.planner = _Planner(adapter.act, stop)
        self.latest.thread.start()
        self.planner.thread.start()
        self.report = LoopReport(stopped_by="")
        self.window: deque[dict[str, Any]] = deque(maxlen=adapter.window)
        self.chunks: list[tuple[int, np.ndarray]] = []  # (tick of the observation, chunk)
        self.last_sent: np.ndarray | None = None
        self.t_start = time.monotonic()
        self.prev_tick_t: float | None = None
        self.started = False
        self.tick_no = 0

    def finish(self, reason: str) -> LoopReport:
        self.report.stopped_by = reason
        self.stop.set()
        if self.recorder is not None:
            self.recorder.event(time.monotonic() - self.t_start, "stop", reason)
        self.report.inference_ms = list(self.planner.latencies)
        return self.report

    def join(self) -> None:
        """Wait (JOIN_S at most) for the inference and camera threads to end; name those that did not."""
        with self.planner.cv:
            self.planner.cv.notify_all()
        threads, deadline = (self.planner.thread, self.latest.thread), time.monotonic() + JOIN_S
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self.report.unfinished = [t.name for t in threads if t.is_alive()]

    def health(self, now: float) -> str | None:
        """Why the loop must stop before reading anything this tick, or None."""
        cfg, planner, latest = self.cfg, self.planner, self.latest
        if self.stop.is_set():
            return "stop requested (Ctrl-C / SIGTERM)"
        if cfg.duration_s is not None and now - self.t_start >= cfg.duration_s:
            return f"duration {cfg.duration_s:g} s reached"
        if planner.error is not None:
            return f"inference failed: {type(planner.error).__name__}: {planner.error}"
        if latest.error is not None:
            return f"camera failed: {type(latest.error).__name__}: {latest.error}"
        if now - latest.t > cfg.stale_s:
            return f"camera: no new frame for {now - latest.t:.2f} s (stale_s {cfg.stale_s})"
        return None

    def tick(self, now: float) -> str | None:
        """One control period: read, observe, plan, command, record. Returns why to stop, or None."""
        why = self.health(now)
        if why:
            return why
        try:
            joints = read_joints(self.robot)
        except LinkTimeout as e:
            return f"robot: stale observation ({e})"
        except RobotServerError as e:
            return f"robot: bad reply, holding ({e})"
        why = check_reading(joints, self.cfg.limits)
        if why:
            return why
        frame = self.latest.frame
        assert frame is not None
        rgb, depth = frame
        obs = self.adapter.observation(joints, rgb, depth)
        why = check_observation(obs)
        if why:
            return why
        self.window.append(obs)
        if self.last_sent is None:
            self.last_sent = joints.copy()
        self._plan()
        action = _action(self.chunks, self.tick_no, self.cfg.ensemble)
        command = None
        if action is None:
            self.report.starved += 1
        else:
            why, command = self._command(action, joints)
            if why:
                return why
        self._account(now, joints, command, rgb, depth, obs)
        return None

    def _plan(self) -> None:
        """Take finished chunks; ask for the next one early enough that it arrives before this one runs out."""
        planner, tick = self.planner, self.tick_no
        self.chunks += planner.take()
        self.chunks = [(t0, c) for t0, c in self.chunks if t0 + len(c) > tick][-8:]
        remaining = (self.chunks[-1][0] + len(self.chunks[-1][1]) - tick) if self.chunks else 0
        period = 1.0 / self.cfg.hz
        lead = 2 + int(np.ceil((np.median(planner.latencies[-5:]) / 1000 if planner.latencies else period) / period))
        if not planner.busy and remaining <= lead:
            planner.ask(tick, list(self.window))

    def _command(self, action: np.ndarray, joints: np.ndarray) -> tuple[str | None, np.ndarray | None]:
        """(why to stop, or None; the command sent) for this tick's action, through the safety decision."""
        cfg, report = self.cfg, self.report
        target = action.copy()
        if cfg.binarize_action_gripper and np.isfinite(target[-1]):
            target[-1] = binarize(target[-1], cfg.gripper_threshold)
        assert self.last_sent is not None
        decision = decide(target, joints, self.last_sent, cfg.limits, self.started)
        if decision.stop:
            return decision.stop, None
        self.started = True
        report.limited += int(decision.limited)
        for w in decision.which:
            report.limited_by[w] = report.limited_by.get(w, 0) + 1
        command = decision.command
        assert command is not None
        wire = command.copy()
        if cfg.command_gripper == "closed_is_one":
            wire[-1] = 1.0 - wire[-1]
        if not cfg.dry_run:
            try:
                self.robot.command_joint_state(wire)
            except (LinkTimeout, RobotServerError) as e:
                return f"robot: command not acknowledged ({e})", None
            report.sent += 1
        self.last_sent = command
        return None, command

    def _account(self, now: float, joints: np.ndarray, command: np.ndarray | None, rgb: np.ndarray,
                 depth: np.ndarray, obs: dict[str, Any]) -> None:
        report = self.report
        if self.prev_tick_t is not None:
            report.period_ms.append((now - self.prev_tick_t) * 1000)
        self.prev_tick_t = now
        if self.recorder is not None:
            latency = self.planner.latencies[-1] if self.planner.latencies else float("nan")
            sent = command if command is not None else self.last_sent
            assert sent is not None  # set at the first tick
            self.recorder.add(now - self.t_start, joints, sent, rgb, depth, obs.get("point_cloud"), latency,
                              report.period_ms[-1] if report.period_ms else float("nan"))
        report.steps += 1
        self.tick_no += 1


def read_joints(robot: Robot) -> np.ndarray:
    """The arm's joint reading as float64; a reply without one is a RobotServerError (the loop stops on it)."""
    obs = robot.get_observations()
    try:
        return np.asarray(obs["joint_positions"], dtype=np.float64)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        msg = f"robot: malformed observation ({type(e).__name__}: {e}); expected a dict with joint_positions"
        raise RobotServerError(msg) from e


def _action(chunks: list[tuple[int, np.ndarray]], tick: int, ensemble: float | None) -> np.ndarray | None:
    """The action for `tick`: from the newest chunk that covers it, or the exp-weighted mean of all that do."""
    covering = [(t0, c) for t0, c in chunks if t0 <= tick < t0 + len(c)]
    if not covering:
        return None
    if ensemble is None:
        t0, c = covering[-1]
        return np.asarray(c[tick - t0])
    weights = np.exp(-ensemble * np.arange(len(covering)))  # oldest first gets the largest weight, as in ACT
    acts = np.stack([c[tick - t0] for t0, c in covering])
    return np.asarray((weights[:, None] * acts).sum(0) / weights.sum())
