"""Local executor: the step as a subprocess in this environment (a GPU box without docker, debugging)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from runner.executors.base import ExecutorBase, StepHandle, StepOutcome
from runner.plan import StepPlan
from runner.records import StepRecord


class LocalExecutor(ExecutorBase):
    name = "local"

    def __init__(self, environ: Mapping[str, str] | None = None, out: BinaryIO | None = None,
                 grace_s: float | None = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.out = out or sys.stdout.buffer
        self.grace_s = grace_s

    def run_step(self, plan: StepPlan, on_start: Callable[[StepHandle], None]) -> StepOutcome:
        env = {**self.environ, **dict(plan.local.env)}
        # Own session: a closed terminal's SIGHUP does not reach the step; the runner forwards Ctrl-C itself.
        proc = subprocess.Popen(list(plan.local.argv), env=env, cwd=plan.local.cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        on_start(StepHandle({"pid": proc.pid}))
        assert proc.stdout is not None  # PIPE was asked for
        # The output is drained by a thread, also while the step is being stopped: a full pipe would block the
        # step in its last prints, and it would be SIGKILLed before its checkpoint was written.
        pump = threading.Thread(target=_pump, args=(proc.stdout.fileno(), self.out), daemon=True)
        pump.start()
        interrupted = False
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            rc = _terminate(proc, self.grace_s if self.grace_s is not None else plan.stop_grace_s)
        pump.join(timeout=10)
        return StepOutcome(exit_code=rc if rc >= 0 else 128 - rc, interrupted=interrupted)

    def stop(self, step: StepRecord, grace_s: float) -> bool:
        pid = _pid(step)
        if pid is None or not self.is_alive(step):
            return False
        # runner.inside forwards SIGTERM to the step's process group and escalates to SIGKILL itself.
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s + 10
        while time.monotonic() < deadline and self.is_alive(step):
            time.sleep(0.1)
        if self.is_alive(step):
            os.killpg(pid, signal.SIGKILL)
        return True

    def release(self, step: StepRecord) -> None:
        """Nothing outlives a local step's process group."""

    def is_alive(self, step: StepRecord) -> bool:
        """The step's runner.inside is still running: its process group exists and, where /proc tells, the pid
        is still that process (a pid reused by another program, or named by a crafted record, is not the step)."""
        pid = _pid(step)
        if pid is None or pid <= 1:
            return False
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError, OverflowError):
            return False
        return is_step_process(pid, step.log)


def _pid(step: StepRecord) -> int | None:
    """The step's runner.inside pid from its record's handle (None when the record holds no integer there)."""
    pid = step.handle.get("pid")
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


def _pump(fd: int, out: BinaryIO) -> None:
    """Copy the step's output to the terminal until it closes; a terminal that went away stops only the copy."""
    terminal = True
    while chunk := os.read(fd, 65536):
        if terminal:
            try:
                out.write(chunk)
                out.flush()
            except (BrokenPipeError, OSError, ValueError):
                terminal = False


def is_step_process(pid: int, log: str | None, proc: Path = Path("/proc")) -> bool:
    """True when `pid` runs `runner.inside` for the step logging to `log` (True where /proc is absent)."""
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not proc.is_dir()
    except OSError:
        return False
    return b"runner.inside" in argv and (log is None or os.fsencode(log) in argv)


def _terminate(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM runner.inside (it forwards to the step's group and escalates after the grace period);
    SIGKILL its group if it is still there well after that. Returns its exit status."""
    for sig, wait in ((signal.SIGTERM, grace_s + 10), (signal.SIGKILL, 10.0)):
        try:
            if sig == signal.SIGTERM:
                os.kill(proc.pid, sig)
            else:
                os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:
            continue  # a second Ctrl-C goes straight to SIGKILL
    return proc.wait()
