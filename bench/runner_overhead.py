"""Runner overhead against a bare `docker run` of the same image and command, measured in the same run.

    python bench/runner_overhead.py [--repeat 5] [--long-s 10]

Reports: a ~10 s step (ratio, target <= 1.05x), a trivial step (added seconds, target < 0.5 s), a no-op
`runner build` (target < 0.5 s) and `runner plan` wall time including interpreter start (target < 0.4 s).
Needs a Docker engine and the local base image (`make setup`).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNNER = [sys.executable, "-m", "runner.cli"]


def wall(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def median_wall(cmd: list[str], cwd: Path, n: int) -> float:
    return statistics.median(wall(cmd, cwd) for _ in range(n))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--long-s", type=float, default=10.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rr-bench-"))
    (work / "jobs").mkdir()
    (work / "jobs" / "bench.yaml").write_text(
        "name: bench\npolicy: command\nsteps:\n"
        f"  long: {{command: [sleep, '{args.long_s:g}']}}\n"
        "  trivial: {command: ['true']}\n")
    subprocess.run([*RUNNER, "build", "bench"], cwd=work, check=True, stdout=subprocess.DEVNULL)
    tag = subprocess.run([*RUNNER, "plan", "bench", "trivial", "--json"], cwd=work, check=True,
                         capture_output=True, text=True).stdout
    import json

    image = json.loads(tag)["image"]
    bare = ["docker", "run", "--rm", image]
    rows = []

    long_bare = median_wall([*bare, "sleep", f"{args.long_s:g}"], work, max(1, args.repeat // 2))
    long_runner = median_wall([*RUNNER, "run", "bench", "long"], work, max(1, args.repeat // 2))
    rows.append((f"step of ~{args.long_s:g}s: runner / bare docker run", f"{long_runner:.2f}s / {long_bare:.2f}s",
                 f"{long_runner / long_bare:.3f}x", "<= 1.05x"))

    triv_bare = median_wall([*bare, "true"], work, args.repeat)
    triv_runner = median_wall([*RUNNER, "run", "bench", "trivial"], work, args.repeat)
    rows.append(("trivial step: runner - bare docker run", f"{triv_runner:.2f}s - {triv_bare:.2f}s",
                 f"+{triv_runner - triv_bare:.2f}s", "< 0.5s"))

    build = median_wall([*RUNNER, "build", "bench"], work, args.repeat)
    rows.append(("no-op `runner build`", f"{build:.3f}s", "", "< 0.5s"))

    plan = median_wall([*RUNNER, "plan", str(REPO / "jobs" / "dp3_banana.yaml"), "train"], work, args.repeat)
    python = median_wall([sys.executable, "-c", "pass"], work, args.repeat)
    rows.append(("`runner plan dp3_banana train` (bare python start)", f"{plan:.3f}s ({python:.3f}s)", "", "< 0.4s"))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'time':<24} {'result':<10} target")
    for name, t, result, target in rows:
        print(f"{name:<{width}}  {t:<24} {result:<10} {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
