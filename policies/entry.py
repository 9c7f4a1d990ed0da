"""Shared plumbing of the step entry points (`python -m policies.<name>.steps <step>`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from policies.context import StepContext, load_context
from policies.data.convert import ConvertOptions, check

#: Exit code of a step whose code has not landed yet (the runner skips those before starting them).
NOT_IMPLEMENTED = 3


def report_check(raw: Path, opts: ConvertOptions) -> int:
    """`runner convert --check`: list every problem in the demos, write nothing."""
    problems = check(raw, opts)
    for p in problems:
        print(f"problem: {p}")
    print(f"check: {len(problems)} problem(s) in {raw}" if problems else f"check: {raw} is ready to convert")
    return 1 if problems else 0


def main(policy: str, steps: Mapping[str, Callable[[StepContext], int]], argv: list[str]) -> int:
    step = argv[0] if argv else ""
    if step not in steps:
        print(f"{policy} {step}: not implemented yet", file=sys.stderr)
        return NOT_IMPLEMENTED
    return steps[step](load_context())
