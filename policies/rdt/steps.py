"""RDT steps as the runner starts them inside the image: `python -m policies.rdt.steps <step>`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from policies.context import StepContext
from policies.data.convert import ConvertOptions, convert
from policies.data.demos import GelloOptions, ProblemsError
from policies.entry import convert_options as common_convert_options
from policies.entry import main, report_check
from policies.rdt.convert import write_rdt


def convert_options(ctx: StepContext) -> ConvertOptions:
    o = ctx.options
    recorded = list(dict.fromkeys(o["cameras"].values()))
    gello = GelloOptions(camera=recorded[0], extra_cameras=tuple(recorded[1:]), velocities=o["velocities"],
                         command_gripper=o["command_gripper"], need_depth=False)
    return common_convert_options(ctx, gello, None)


def step_convert(ctx: StepContext) -> int:
    raw, out = ctx.path("raw"), ctx.path("converted")
    opts = convert_options(ctx)
    t5 = ctx.paths.get("weights", {}).get("t5")
    if opts.instructions and not t5:
        print("error: steps.convert.instructions need a T5 encoder to embed them: set weights.t5 to a local "
              "t5-v1_1-xxl folder", file=sys.stderr)
        return 1
    if ctx.mode == "check":
        return report_check(raw, opts)
    try:
        report = convert(raw, out, opts, progress=lambda s: print(s, flush=True))
        embeddings = None
        if opts.instructions and t5:
            from policies.rdt.embed import encode_instructions

            embeddings = encode_instructions(list(opts.instructions), Path(t5))
            print(f"convert: embedded {len(embeddings)} instruction(s) with {t5}", flush=True)
        target = out / "rdt" / f"{opts.task}-{opts.config}-{len(report.episodes)}"
        size = tuple(ctx.options["image_size"])
        rdt = write_rdt(report.episodes, target, dict(ctx.options["cameras"]), (int(size[0]), int(size[1])),
                        embeddings, opts.instructions)
    except (ProblemsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    (ctx.run_dir / "convert.json").write_text(json.dumps(
        {"episodes": rdt.episodes, "samples": rdt.samples, "state_dim": rdt.state_dim, "rdt_data": str(rdt.path)},
        indent=2))
    print(f"convert: RDT data {rdt.path} ({rdt.episodes} episodes, {rdt.samples} samples, state dim {rdt.state_dim})")
    return 0


STEPS = {"convert": step_convert}


if __name__ == "__main__":
    sys.exit(main("rdt", STEPS, sys.argv[1:]))
