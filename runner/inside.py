"""Runs inside a step's container (or as the local executor's child): starts the step, copies its output to
the terminal and to the log file as it comes, forwards signals, and leaves the exit code beside the log.

Stdlib only and tiny: it starts before every step. Usage: python -m runner.inside --log FILE -- CMD...
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from runner.layout import STOP_GRACE_S

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)


def exit_file(log: Path) -> Path:
    """Where the exit code of the step logging to `log` is left."""
    return log.with_suffix(".exit")


def _grace_s() -> float:
    try:
        return float(os.environ.get("RUNNER_STOP_GRACE_S", STOP_GRACE_S))
    except ValueError:
        return STOP_GRACE_S


def _stamp(msg: str) -> bytes:
    return f"[runner {time.strftime('%Y-%m-%dT%H:%M:%S')}] {msg}\n".encode()


def run(log_path: Path, cmd: list[str]) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = sys.stdout.buffer
    terminal_ok = True
    with open(log_path, "ab", buffering=0) as log:
        try:
            # Its own process group: a signal reaches the step and everything it started, as Ctrl-C in a
            # terminal would (a shell waiting on `sleep` would otherwise sit on a SIGTERM until it returns).
            child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            msg = _stamp(f"cannot start {cmd[0]!r}: {e.strerror}")
            log.write(msg)
            out.write(msg)
            out.flush()
            _leave_exit(log_path, 127)
            return 127

        def kill_group(signum: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)

        stopped_by: list[int] = []

        def forward(signum: int, _frame: object) -> None:
            if child.poll() is not None:
                return
            kill_group(signum)
            if signum in (signal.SIGTERM, signal.SIGINT):
                stopped_by.append(signum)
                # Whoever stops us may not be able to reach the step's group: escalate ourselves.
                timer = threading.Timer(_grace_s(), kill_group, args=(signal.SIGKILL,))
                timer.daemon = True
                timer.start()

        for s in FORWARDED:
            signal.signal(s, forward)
        assert child.stdout is not None
        fd = child.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
            if not chunk:
                break
            log.write(chunk)
            if terminal_ok:
                try:
                    out.write(chunk)
                    out.flush()
                except (BrokenPipeError, OSError):
                    terminal_ok = False  # the reader went away; the log file still gets everything
        rc = child.wait()
        code = 128 - rc if rc < 0 else rc
        several = int(os.environ.get("RUNNER_NUM_MACHINES", "1") or 1) > 1
        node = f" on node {os.environ.get('SLURMD_NODENAME') or socket.gethostname()}" if several else ""
        log.write(_stamp(f"step exited with code {code}{node}"))
        if stopped_by and code not in (0, 128 + stopped_by[0]):
            # Launchers report their own stop as a failure (torchrun: SignalException, exit 1) after the ranks
            # have saved and exited: the step was stopped, and is recorded as such.
            code = 128 + stopped_by[0]
            log.write(_stamp(f"stopped by {signal.Signals(stopped_by[0]).name}: recorded as exit {code}"))
    _leave_exit(log_path, code)
    return code


def _leave_exit(log_path: Path, code: int) -> None:
    target = exit_file(log_path)
    tmp = target.with_name(f"{target.name}.{socket.gethostname()}.{os.getpid()}.tmp")  # each node of a step its own
    tmp.write_text(json.dumps({"exit_code": code, "ended": time.time()}))
    os.replace(tmp, target)


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--log" or argv[2] != "--":
        sys.stderr.write("usage: python -m runner.inside --log FILE -- CMD...\n")
        return 2
    return run(Path(argv[1]), argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
