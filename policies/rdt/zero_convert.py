"""A DeepSpeed ZeRO checkpoint (engine: accelerate) read by the fused engine, on any GPU count.

DeepSpeed keeps each process's slice of the flattened fp32 weights and AdamW moments; its own converter
(`deepspeed.checkpoint.ds_to_universal`, run in a subprocess on the CPU) writes them per parameter
(`zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt`, whatever the number of processes that saved them). Those become
the fused engine's masters and AdamW state (policies/rdt/fused.py), with the learning rate DeepSpeed's optimizer
had. The LR scheduler, the RNG states and the EMA are the same files in both engines' checkpoints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from policies import checkpoint_io

#: The optimizer shards DeepSpeed writes, one a data-parallel process: [bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt
SHARDS = "*zero_pp_rank_*_optim_states.pt"


class ConvertError(Exception):
    """The DeepSpeed checkpoint could not be turned into the fused engine's state."""


def shards(folder: Path) -> list[Path]:
    """The ZeRO optimizer shards of a checkpoint-<step>/ folder (none: not a DeepSpeed checkpoint)."""
    return sorted((folder / "pytorch_model").glob(SHARDS))


def to_universal(folder: Path, out: Path, timeout_s: float = 3600.0) -> None:
    """DeepSpeed's per-parameter form of `folder`'s ZeRO state, written to `out` (through a temp folder: `out`
    exists only complete). The files were checked by the checkpoint store's pickle scan before this runs."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    argv = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
            str(folder / "pytorch_model"), "--output_folder", str(tmp), "--num_extract_workers", "4",
            "--num_merge_workers", "2", "--inject_missing_state"]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        shutil.rmtree(tmp, ignore_errors=True)
        msg = f"DeepSpeed's converter did not finish within {timeout_s:.0f} s"
        raise ConvertError(msg) from e
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ConvertError(f"DeepSpeed's converter failed (exit {done.returncode}): " + " | ".join(tail))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def learning_rate(universal: Path) -> float:
    """The learning rate DeepSpeed's optimizer had when it saved (its param group's `lr`)."""
    path = universal / "zero" / "optimizer_state.pt"
    checkpoint_io.check_pickles(path)  # DeepSpeed's LossScaler and enums need the full unpickler
    state = torch.load(path, map_location="cpu", weights_only=False)
    return float(state["param_groups"][0]["lr"])


def fused_state(universal: Path, names: list[str], master: list[torch.Tensor],
                optimizer_like: dict[str, Any], device: torch.device | str = "cpu") -> dict[str, Any]:
    """The state MasterWeights.load_state_dict takes, from the per-parameter files: `names` and `master` in the
    model's parameter order; `optimizer_like`: the fused optimizer's own state_dict (its groups and options).
    Read onto `device` (the GPU: host memory holds no copy of the whole state a process)."""
    zero = universal / "zero"

    def read(name: str, what: str) -> Any:
        return checkpoint_io.load(zero / name / f"{what}.pt", device)

    masters, state = [], {}
    for i, (name, like) in enumerate(zip(names, master, strict=True)):
        if not (zero / name).is_dir():
            msg = f"the DeepSpeed checkpoint has no optimizer state for parameter {name}"
            raise ConvertError(msg)
        fp32, avg, avg_sq = (read(name, w)["param"].float() for w in ("fp32", "exp_avg", "exp_avg_sq"))
        if fp32.shape != like.shape:
            msg = f"parameter {name}: the DeepSpeed checkpoint has shape {tuple(fp32.shape)}, the model {tuple(like.shape)}"
            raise ConvertError(msg)
        step = torch.as_tensor(read(name, "step"), dtype=torch.float32).reshape(()).cpu()
        masters.append(fp32)
        state[i] = {"step": step, "exp_avg": avg.reshape(like.shape), "exp_avg_sq": avg_sq.reshape(like.shape)}
    lr = learning_rate(universal)
    groups = [{**g, "lr": lr} for g in optimizer_like["param_groups"]]
    return {"master": masters, "optimizer": {"state": state, "param_groups": groups}}
