"""Shared plumbing of the step entry points (`python -m policies.<name>.steps <step>`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar

from policies import PolicyInfo, get_policy
from policies.context import StepContext, StepInputError, load_context, show_host_paths
from policies.convert_options import ConvertCommon
from policies.data.convert import ConvertOptions, check
from policies.data.demos import GelloOptions
from policies.data.pointcloud import CloudSpec
from policies.data.transform import TimeOptions
from runner.spec.models import step_model


def convert_options(ctx: StepContext, o: ConvertCommon, gello: GelloOptions, cloud: CloudSpec | None) -> ConvertOptions:
    """The conversion options every policy shares (policies/convert_options.py), from the step's options."""
    time = TimeOptions(binarize_gripper=o.binarize_gripper, gripper_threshold=o.gripper_threshold, stride=o.stride,
                       keyframes=o.keyframes, keyframe_joint_delta=o.keyframe_joint_delta,
                       action_source=o.action_source)
    return ConvertOptions(task=ctx.task or ctx.job, config=o.config, gello=gello, time=time, cloud=cloud,
                          jpeg_quality=o.jpeg_quality, workers=o.workers, instructions=tuple(o.instructions))


def report_check(raw: Path, opts: ConvertOptions) -> int:
    """`runner convert --check`: list every problem in the demos, write nothing."""
    problems = check(raw, opts)
    for p in problems:
        print(f"problem: {p}")
    print(f"check: {len(problems)} problem(s) in {raw}" if problems else f"check: {raw} is ready to convert")
    return 1 if problems else 0


class _StepLog(logging.Handler):
    """Library messages (logging) in the step's log as its own lines are: `warning: ...`, `note: ...`, written to
    the current sys.stderr (which speaks host paths once show_host_paths ran)."""

    WORDS: ClassVar[dict[int, str]] = {logging.INFO: "note", logging.WARNING: "warning", logging.ERROR: "error",
                                       logging.CRITICAL: "error"}

    def emit(self, record: logging.LogRecord) -> None:
        word = self.WORDS.get(record.levelno, record.levelname.lower())
        sys.stderr.write(f"{word}: {record.getMessage()}\n")
        sys.stderr.flush()


def setup_logging() -> None:
    """The policies' and robot's loggers, shown from INFO up in the step's log (once per process)."""
    for name in ("policies", "robot"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StepLog) for h in logger.handlers):
            logger.addHandler(_StepLog())
        logger.setLevel(logging.INFO)


def main(policy: str | PolicyInfo, steps: Mapping[str, Callable[[StepContext], int]], argv: list[str]) -> int:
    """Run step argv[0] of `policy` (a name the registry knows, or the PolicyInfo itself: a plugin's process has
    not registered it) on the context the runner wrote, its options validated against the policy's job model."""
    info = get_policy(policy) if isinstance(policy, str) else policy
    policy = info.name
    step = argv[0] if argv else ""
    if step not in steps:
        print(f"{policy}: no step {step!r} (its steps: {', '.join(steps)})", file=sys.stderr)
        return 2
    try:
        ctx = load_context(options_model=step_model(info.job_model, step))
        show_host_paths(ctx)
        setup_logging()
        return steps[step](ctx)
    except StepInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if "torch.distributed" in sys.modules:  # the step may have trained in a process group
            from policies import process_group

            process_group.leave()
