"""Gather the facts about this machine that plans depend on (the impure counterpart of plan.Machine)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.netif import read_interfaces
from runner.plan import Machine

CODE_DIR = Path(__file__).resolve().parent.parent


def gather_machine(environ: Mapping[str, str]) -> Machine:
    return Machine(uid=os.getuid(), gid=os.getgid(), hostname=socket.gethostname(),
                   interfaces=tuple(read_interfaces()), code_dir=CODE_DIR, python=sys.executable,
                   environ=dict(environ))


def git_info(path: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git repo holding `path`, or {} when it is not in one."""
    cwd = path if path.is_dir() else path.parent
    try:
        # One process for both: porcelain v2 prints "# branch.oid <commit>" and a line per change.
        out = subprocess.run(["git", "status", "--porcelain=v2", "--branch"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = out.splitlines()
    commit = next((ln.split()[2] for ln in lines if ln.startswith("# branch.oid ")), None)
    dirty = any(not ln.startswith("#") for ln in lines)
    return {"commit": None if commit == "(initial)" else commit, "dirty": dirty}
