"""RDT steps as the runner starts them inside the image: `python -m policies.rdt.steps <step>`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from policies import lineage
from policies.context import StepContext
from policies.data.convert import ConvertOptions, convert
from policies.data.demos import GelloOptions, ProblemsError
from policies.entry import convert_options as common_convert_options
from policies.entry import main, report_check
from policies.rdt.config import RdtConvert, RdtEval, RdtTrain
from policies.rdt.convert import write_rdt
from policies.rdt.infer import resolve
from policies.rdt.launch import LAUNCHED
from policies.signals import exit_code, stop_flag
from robot.options import Deploy
from robot.protocol import PolicyAdapter


def convert_options(ctx: StepContext) -> ConvertOptions:
    o = ctx.typed(RdtConvert)
    recorded = list(dict.fromkeys(o.cameras.values()))
    gello = GelloOptions(camera=recorded[0], extra_cameras=tuple(recorded[1:]), velocities=o.velocities,
                         command_gripper=o.command_gripper, need_depth=False)
    return common_convert_options(ctx, o, gello, None)


def step_convert(ctx: StepContext) -> int:
    raw = ctx.path("raw")
    opts = convert_options(ctx)
    t5 = ctx.paths.get("weights", {}).get("t5")
    if opts.instructions and not t5:
        print("error: steps.convert.instructions need a T5 encoder to embed them: set weights.t5 to a local "
              "t5-v1_1-xxl folder", file=sys.stderr)
        return 1
    if ctx.mode == "check":
        return report_check(raw, opts)
    out = ctx.path("converted")
    try:
        report = convert(raw, out, opts, progress=lambda s: print(s, flush=True))
        embeddings, empty = None, None
        if opts.instructions and t5:
            from policies.rdt.embed import encode_instructions

            *embeddings, empty = encode_instructions([*opts.instructions, ""], Path(t5))
            print(f"convert: embedded {len(embeddings)} instruction(s) with {t5}", flush=True)
        target = out / "rdt" / f"{opts.task}-{opts.config}-{len(report.episodes)}"
        o = ctx.typed(RdtConvert)
        rdt = write_rdt(report.episodes, target, dict(o.cameras), o.image_size,
                        embeddings, opts.instructions, empty)
    except (ProblemsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    (ctx.run_dir / "convert.json").write_text(json.dumps(
        {"episodes": rdt.episodes, "samples": rdt.samples, "state_dim": rdt.state_dim, "rdt_data": str(rdt.path)},
        indent=2))
    print(f"convert: RDT data {rdt.path} ({rdt.episodes} episodes, {rdt.samples} samples, state dim {rdt.state_dim})")
    return 0


def _rdt_data(ctx: StepContext, named: str | None) -> Path:
    """The converted RDT folder: `named` (steps.<step>.dataset), or the newest <task>-<config>-<n> under
    converted/rdt."""
    root = ctx.path("converted") / "rdt"
    if named:
        return root / str(named)
    found = sorted(root.glob("*/episode_0"), key=lambda p: p.stat().st_mtime)
    if not found:
        msg = f"no RDT data under {root}; run `runner convert {ctx.job}` first"
        raise FileNotFoundError(msg)
    folder: Path = found[-1].parent
    return folder


def step_train(ctx: StepContext) -> int:
    if os.environ.get(LAUNCHED) != "1":
        return _launch(ctx)
    from policies.rdt.engine import ResumeError
    from policies.rdt.train import Inputs, train
    from policies.rdt.weights import WeightsError

    weights = ctx.paths.get("weights", {})
    if not weights.get("siglip"):
        print(f"error: RDT needs a SigLIP image encoder: set weights.siglip in {ctx.job}'s job file", file=sys.stderr)
        return 2
    pretrained = weights.get("rdt")
    o = ctx.typed(RdtTrain)
    if o.model_size == "1b" and not pretrained:
        print("warning: weights.rdt is not set: fine-tuning RDT-1B from random weights", file=sys.stderr)
    try:
        choice = lineage.choose(ctx.path("checkpoints"), ctx.run_id, ctx.resume, ctx.resume_from, PATTERN)
        if lineage.main_rank():
            print(choice.note, flush=True)
        inputs = Inputs(data=_rdt_data(ctx, o.dataset), siglip=Path(weights["siglip"]), output=choice.folder,
                        run_dir=ctx.run_dir, pretrained=Path(pretrained) if pretrained else None, start=choice.start)
        result = train(o, inputs, resume=choice.resume, stop=stop_flag(),
                       extra={"job": ctx.job, "task": ctx.task}, say=lambda m: print(m, flush=True))
    except (FileNotFoundError, ValueError, ResumeError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return exit_code(result.stopped_by)


#: RDT's checkpoint folders, in each lineage folder (policies/lineage.py).
PATTERN = "checkpoint-*"


def _checkpoint_folder(ctx: StepContext, name: str) -> Path:
    """'latest' of the newest lineage, or a checkpoint folder relative to the checkpoints folder."""
    root = ctx.path("checkpoints")
    if name == "latest":
        return resolve(lineage.newest(root, PATTERN))
    return resolve(root, name)


def _launch(ctx: StepContext) -> int:
    import torch

    from policies.rdt.launch import LaunchError, accelerate_argv, gpu_memory

    try:
        argv = accelerate_argv(sys.executable, ctx.typed(RdtTrain), ctx.spec["resources"]["gpus"], torch.cuda.device_count(),
                               os.environ, gpu_bytes=gpu_memory())
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("train: " + " ".join(argv), flush=True)
    os.environ[LAUNCHED] = "1"
    if not torch.cuda.is_available():  # named, so DeepSpeed does not warn in every process that it found no GPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # torchrun's agent passes a stop on to the training processes and waits this long for their checkpoint.
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", os.environ.get("RUNNER_STOP_GRACE_S", "30"))
    os.execvp(argv[0], argv)


def step_eval(ctx: StepContext) -> int:
    from policies.rdt.evaluate import evaluate
    from policies.rdt.infer import load
    from policies.rdt.weights import WeightsError

    o = ctx.typed(RdtEval)
    try:
        folder = _checkpoint_folder(ctx, o.checkpoint)
        siglip = ctx.paths.get("weights", {}).get("siglip")
        policy = load(folder, o.device, o.weights, Path(siglip) if siglip else None)
        meta = policy.meta
        episodes = [Path(p) for p in meta.get("val_episodes") or []]
        if episodes and not episodes[0].is_file():  # paths as the training container saw them
            data = _rdt_data(ctx, o.dataset)
            episodes = [data / p.parent.name / p.name for p in episodes]
        if not episodes:
            data = _rdt_data(ctx, o.dataset)
            episodes = sorted(data.glob("episode_*/episode_*.hdf5"), key=lambda p: int(p.stem.split("_")[1]))[-1:]
            print(f"eval: the checkpoint held no episode out; evaluating {episodes[0].parent.name} (seen in training)")
    except (FileNotFoundError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if o.episodes:
        episodes = episodes[: o.episodes]
    policy.reset(o.seed)
    summary = evaluate(policy, episodes, ctx.run_dir / "eval", o.stride,
                       extra={"checkpoint": str(folder), "weights": o.weights})
    print(f"eval: {folder.name} ({o.weights} weights) on {[p.parent.name for p in episodes]}: joint MSE "
          f"{summary['mse_joints']:.5f}, gripper MSE {summary['gripper_mse']:.5f}, gripper accuracy "
          f"{summary['gripper_accuracy']:.3f}; plots and eval.json in {ctx.run_dir / 'eval'}")
    return 0


def _deploy_adapter(ctx: StepContext) -> tuple[PolicyAdapter, dict[str, Any]]:
    import torch

    from policies.deployment import check_preprocessing, deploy_preprocessing
    from policies.rdt.adapter import RdtAdapter
    from policies.rdt.infer import load

    o = ctx.typed(Deploy)
    folder = _checkpoint_folder(ctx, o.checkpoint)
    siglip = ctx.paths.get("weights", {}).get("siglip")
    policy = load(folder, None, "ema", Path(siglip) if siglip else None, compile=bool(o.compile))
    conversion = dict(policy.meta.get("conversion") or {})
    check_preprocessing(conversion, deploy_preprocessing(ctx.spec), f"{ctx.job} deploy with {folder.name}")
    data = Path(policy.meta["dataset"])
    if not data.is_dir():  # as the training container saw it
        data = _rdt_data(ctx, None)
    found = sorted(data.glob(f"episode_*/instructions/lang_embed_{o.instruction}.pt"))
    if not found:
        msg = f"no instruction embedding lang_embed_{o.instruction}.pt under {data}: convert with instructions"
        raise FileNotFoundError(msg)
    emb = torch.load(found[0], map_location="cpu", weights_only=True)
    print(f"deploy: RDT checkpoint {folder}, instruction {o.instruction}")
    return RdtAdapter(policy, conversion, policy.meta.get("camera_slots") or {"cam_high": "front"}, emb), conversion


def step_deploy(ctx: StepContext) -> int:
    from policies.deployment import deploy

    return deploy(ctx, _deploy_adapter)


STEPS = {"convert": step_convert, "train": step_train, "eval": step_eval, "deploy": step_deploy}


if __name__ == "__main__":
    sys.exit(main("rdt", STEPS, sys.argv[1:]))
