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
