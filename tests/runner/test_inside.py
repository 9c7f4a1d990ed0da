import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.inside import exit_file

REPO = Path(__file__).resolve().parents[2]


def start(log: Path, *cmd: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "runner.inside", "--log", str(log), "--", *cmd],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_tees_output_and_returns_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    p = start(log, "sh", "-c", "echo one; echo two >&2; exit 7")
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 7
    assert b"one\n" in out and b"two\n" in out
    text = log.read_text()
    assert "one\ntwo\n" in text and "step exited with code 7" in text
    assert json.loads(exit_file(log).read_text())["exit_code"] == 7


def test_forwards_sigterm_and_keeps_lines_written_before_it(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    p = start(log, "sh", "-c", "echo started; sleep 30; echo never")
    deadline = time.monotonic() + 10
    while "started" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=10)
    assert p.returncode == 143
    text = log.read_text()
    assert "started" in text and "never" not in text


def test_missing_command_is_127_with_a_message(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    p = start(log, "no-such-command-xyz")
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 127 and b"cannot start 'no-such-command-xyz'" in out


def _stopped(tmp_path: Path, code_on_sigterm: int) -> tuple[int, str]:
    """A step that answers SIGTERM by exiting with `code_on_sigterm`, stopped: (inside's exit code, the log)."""
    log = tmp_path / "s.log"
    script = ("import signal, sys, time\n"
              f"signal.signal(signal.SIGTERM, lambda *_: sys.exit({code_on_sigterm}))\n"
              "print('up', flush=True)\ntime.sleep(30)\n")
    p = start(log, sys.executable, "-c", script)
    deadline = time.monotonic() + 10
    while "up" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=10)
    assert json.loads(exit_file(log).read_text())["exit_code"] == p.returncode
    return p.returncode, log.read_text()


def test_a_launcher_that_reports_its_stop_as_a_failure_is_recorded_as_stopped(tmp_path: Path) -> None:
    """torchrun's agent answers SIGTERM with a SignalException and exit 1 after its ranks saved and left (seen on
    two H200s, `runner stop` of a 2-GPU DP3 run): the step was stopped, not failed."""
    code, text = _stopped(tmp_path, 1)
    assert code == 143
    assert "step exited with code 1" in text and "stopped by SIGTERM: recorded as exit 143" in text


def test_a_step_that_succeeds_after_a_stop_signal_keeps_its_code(tmp_path: Path) -> None:
    code, text = _stopped(tmp_path, 0)
    assert code == 0 and "recorded as" not in text
