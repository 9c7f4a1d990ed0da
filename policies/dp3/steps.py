"""DP3 steps as the runner starts them inside the image: `python -m policies.dp3.steps <step>`."""

from __future__ import annotations

import json
import sys

from policies.context import StepContext
from policies.data.convert import ConversionError, ConvertOptions, convert
from policies.data.demos import GelloOptions
from policies.data.pointcloud import CloudSpec
from policies.data.transform import TimeOptions
from policies.dp3.zarr_buffer import BufferError, buffer_name, write_buffer
from policies.entry import main, report_check


def convert_options(ctx: StepContext) -> ConvertOptions:
    """The job's convert options as the conversion library takes them."""
    o = ctx.options
    intr = o.get("intrinsics")
    if not intr:
        msg = "steps.convert.intrinsics (fx, fy, cx, cy, depth_scale) is required to make point clouds for DP3"
        raise SystemExit(msg)
    crop = o.get("crop") or {}
    cloud = CloudSpec(fx=intr["fx"], fy=intr["fy"], cx=intr["cx"], cy=intr["cy"], depth_scale=intr["depth_scale"],
                      num_points=o["num_points"],
                      extrinsics=tuple(tuple(r) for r in o["extrinsics"]) if o.get("extrinsics") else None,
                      crop_min=tuple(crop["min"]) if crop else None, crop_max=tuple(crop["max"]) if crop else None,
                      presample=o["presample"], voxel_size=o["voxel_size"], seed=o["seed"])
    return ConvertOptions(
        task=ctx.task or ctx.job, config=o["config"],
        gello=GelloOptions(camera=o["camera"], velocities=o["velocities"], command_gripper=o["command_gripper"]),
        time=TimeOptions(binarize_gripper=o["binarize_gripper"], gripper_threshold=o["gripper_threshold"],
                         stride=o["stride"], keyframes=o["keyframes"], keyframe_joint_delta=o["keyframe_joint_delta"],
                         action_source=o["action_source"]),
        cloud=cloud, jpeg_quality=o["jpeg_quality"], workers=o["workers"], instructions=tuple(o["instructions"]))


def step_convert(ctx: StepContext) -> int:
    raw, out = ctx.path("raw"), ctx.path("converted")
    opts = convert_options(ctx)
    if ctx.mode == "check":
        return report_check(raw, opts)
    try:
        report = convert(raw, out, opts, progress=lambda s: print(s, flush=True))
        buf = write_buffer(report.episodes, out / f"{buffer_name(opts.task, opts.config, len(report.episodes))}.zarr")
    except (ConversionError, BufferError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = {"episodes": len(report.episodes), "frames_in": report.frames_in, "frames_out": report.frames_out,
               "seconds": round(report.seconds, 2), "zarr": str(buf.path), "samples": buf.samples,
               "state_dim": buf.state_dim, "point_cloud": list(buf.point_shape)}
    (ctx.run_dir / "convert.json").write_text(json.dumps(summary, indent=2))
    print(f"convert: DP3 replay buffer {buf.path} ({buf.samples} samples, state/action dim {buf.state_dim}, "
          f"point cloud {buf.point_shape})")
    return 0


STEPS = {"convert": step_convert}


if __name__ == "__main__":
    sys.exit(main("dp3", STEPS, sys.argv[1:]))
