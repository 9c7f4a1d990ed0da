"""DP3 steps as the runner starts them inside the image: `python -m policies.dp3.steps <step>`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from policies import lineage
from policies.checkpoint_io import CheckpointError
from policies.context import StepContext, StepInputError
from policies.data.convert import ConvertOptions, convert, storage_error
from policies.data.demos import GelloOptions, ProblemsError
from policies.data.pointcloud import CloudSpec
from policies.dp3.checkpoints import load_file, resolve
from policies.dp3.config import Dp3Convert, Dp3Eval, Dp3Train
from policies.dp3.data import DataShapeError, ReplayData, check_dims, find_buffer, load_buffer
from policies.dp3.evaluate import evaluate
from policies.dp3.infer import model_from_payload
from policies.dp3.model import Dp3Config
from policies.dp3.train import train
from policies.dp3.zarr_buffer import buffer_name, write_buffer
from policies.entry import convert_options as common_convert_options
from policies.entry import main, report_check
from policies.signals import exit_code, stop_flag
from robot.options import Deploy
from robot.protocol import PolicyAdapter


def convert_options(ctx: StepContext) -> ConvertOptions:
    """The job's convert options as the conversion library takes them."""
    o = ctx.typed(Dp3Convert)
    intr = o.intrinsics
    if intr is None:
        msg = "steps.convert.intrinsics (fx, fy, cx, cy, depth_scale) is required to make point clouds for DP3"
        raise StepInputError(msg)
    crop = o.crop
    cloud = CloudSpec(fx=intr.fx, fy=intr.fy, cx=intr.cx, cy=intr.cy, depth_scale=intr.depth_scale,
                      num_points=o.num_points,
                      extrinsics=tuple(tuple(r) for r in o.extrinsics) if o.extrinsics else None,
                      crop_min=crop.min if crop else None, crop_max=crop.max if crop else None,
                      presample=o.presample, voxel_size=o.voxel_size, seed=o.seed)
    gello = GelloOptions(camera=o.camera, velocities=o.velocities, command_gripper=o.command_gripper)
    return common_convert_options(ctx, o, gello, cloud)


def step_convert(ctx: StepContext) -> int:
    raw = ctx.path("raw")
    opts = convert_options(ctx)
    if ctx.mode == "check":
        return report_check(raw, opts)
    out = ctx.path("converted")
    try:
        report = convert(raw, out, opts, progress=lambda s: print(s, flush=True))
        zarr_path = out / f"{buffer_name(opts.task, opts.config, len(report.episodes))}.zarr"
        try:
            buf = write_buffer(report.episodes, zarr_path)
        except OSError as e:
            raise storage_error(e, out) from e
    except ProblemsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = {"episodes": len(report.episodes), "frames_in": report.frames_in, "frames_out": report.frames_out,
               "seconds": round(report.seconds, 2), "zarr": str(buf.path), "samples": buf.samples,
               "state_dim": buf.state_dim, "point_cloud": list(buf.point_shape)}
    (ctx.run_dir / "convert.json").write_text(json.dumps(summary, indent=2))
    print(f"convert: DP3 replay buffer {buf.path} ({buf.samples} samples, state/action dim {buf.state_dim}, "
          f"point cloud {buf.point_shape})")
    return 0


def _train_options(ctx: StepContext) -> Dp3Train:
    """The job's train options, for the steps after training (the buffer it read, the device it asked for)."""
    return Dp3Train.model_validate((ctx.spec.get("steps") or {}).get("train") or {})


def _buffer(ctx: StepContext, o: Dp3Train) -> ReplayData:
    path = find_buffer(ctx.path("converted"), ctx.task or ctx.job, o.config, o.dataset)
    return load_buffer(path)


def _device(o: Dp3Train) -> torch.device:
    return torch.device(o.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def step_train(ctx: StepContext) -> int:
    o = ctx.typed(Dp3Train)
    try:
        data = _buffer(ctx, o)
        check_dims(data, {"state_dim": o.state_dim, "action_dim": o.action_dim, "num_points": o.num_points},
                   ctx.spec.get("name", ctx.job) + "'s job file")
    except (FileNotFoundError, DataShapeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if o.use_pc_color and data.point_cloud.shape[2] < 6:
        print(f"error: steps.train.use_pc_color needs xyzrgb points; {data.path.name} has {data.point_cloud.shape[2]} "
              "channels", file=sys.stderr)
        return 2
    cfg = Dp3Config(state_dim=data.state.shape[1], action_dim=data.action.shape[1], num_points=data.point_cloud.shape[1],
                    point_channels=data.point_cloud.shape[2], use_pc_color=o.use_pc_color, horizon=o.horizon,
                    n_obs_steps=o.n_obs_steps, n_action_steps=o.n_action_steps, down_dims=tuple(o.down_dims))
    import zarr

    extra = {"dataset": str(data.path), "conversion": dict(zarr.open(str(data.path), "r").attrs.get("conversion", {})),
             "job": ctx.job, "task": ctx.task}
    try:
        choice = lineage.choose(ctx.path("checkpoints"), ctx.run_id, ctx.resume, ctx.resume_from, PATTERN)
        if lineage.main_rank():
            print(choice.note, flush=True)
        result = train(cfg, data, o, ckpt_dir=choice.folder, run_dir=ctx.run_dir, device=_device(o),
                       resume=choice.resume, extra=extra, say=lambda m: print(m, flush=True), stop=stop_flag(),
                       start=choice.start)
    except (lineage.LineageError, CheckpointError, DataShapeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return exit_code(result.stopped_by)


#: DP3's checkpoint files, in each lineage folder (policies/lineage.py).
PATTERN = "step-*.ckpt"


def _checkpoint(ctx: StepContext, which: str) -> Path:
    """'latest' / 'best' of the newest lineage, or a path relative to the checkpoints folder."""
    root = ctx.path("checkpoints")
    if which in ("latest", "best"):
        return resolve(lineage.newest(root, PATTERN), which, {"job": ctx.job})
    return resolve(root, which, {"job": ctx.job})


def step_eval(ctx: StepContext) -> int:
    o, trained = ctx.typed(Dp3Eval), _train_options(ctx)
    dev = _device(trained)
    try:
        ckpt = _checkpoint(ctx, o.checkpoint)
        data = _buffer(ctx, trained).to(dev)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        payload = load_file(ckpt, dev)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = model_from_payload(payload, dev)
    episodes = list(payload.get("val_episodes") or [])
    if not episodes:
        episodes = [data.n_episodes - 1]
        print(f"eval: the checkpoint held no episode out; evaluating episode {episodes[0]} (seen in training)")
    if o.episodes:
        episodes = episodes[: o.episodes]
    weights = "EMA" if payload["state_dicts"].get("ema_model") is not None else "model"
    summary = evaluate(model, data, episodes, ctx.run_dir / "eval", title=f"{ckpt.name} ({weights} weights)")
    print(f"eval: {ckpt.name} on episodes {episodes}: joint MSE {summary['mse_joints']:.5f}, gripper MSE "
          f"{summary['gripper_mse']:.5f}, gripper accuracy {summary['gripper_accuracy']:.3f}; "
          f"plots and eval.json in {ctx.run_dir / 'eval'}")
    return 0


def _deploy_adapter(ctx: StepContext) -> tuple[PolicyAdapter, dict[str, Any]]:
    from policies.deployment import check_preprocessing, deploy_preprocessing
    from policies.dp3.adapter import Dp3Adapter
    from policies.dp3.infer import load

    o = ctx.typed(Deploy)
    ckpt = _checkpoint(ctx, o.checkpoint)
    policy = load(ckpt, _device(_train_options(ctx)), compile=o.compile is not False)
    check_preprocessing(policy.conversion, deploy_preprocessing(ctx.spec), f"{ctx.job} deploy with {ckpt.name}")
    print(f"deploy: DP3 checkpoint {ckpt}")
    return Dp3Adapter(policy, policy.conversion), policy.conversion


def step_deploy(ctx: StepContext) -> int:
    from policies.deployment import deploy

    return deploy(ctx, _deploy_adapter)


STEPS = {"convert": step_convert, "train": step_train, "eval": step_eval, "deploy": step_deploy}


if __name__ == "__main__":
    sys.exit(main("dp3", STEPS, sys.argv[1:]))
