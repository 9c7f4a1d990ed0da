"""Model weights in and out: the official rdt-1b release from a local path (strict key check), and the weights
inside this runner's checkpoint-<step>/ folders (DeepSpeed's `pytorch_model/mp_rank_00_model_states.pt` key
`module`, accelerate's `model.safetensors` without DeepSpeed, or the EMA's `ema/model.safetensors`).

KEY_MAP renames checkpoint keys to this model's; the model keeps the official names, so it is empty, and a
test pins that the official names load without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from policies import checkpoint_io

KEY_MAP: dict[str, str] = {}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors")


class WeightsError(ValueError):
    """Weights that cannot be read or loaded strictly; the message names the file and the first differing keys. A
    ValueError: bad input, which every step reports as an error with exit 2 (deploy included)."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a folder (a released model or a checkpoint) or a single file."""
    if path.is_dir():
        for name in ("pytorch_model/mp_rank_00_model_states.pt", *_WEIGHT_FILES):
            if (path / name).is_file():
                return read_state_dict(path / name)
        msg = f"{path}: no weights found (looked for pytorch_model/mp_rank_00_model_states.pt, {', '.join(_WEIGHT_FILES)})"
        raise WeightsError(msg)
    if not path.is_file():
        msg = f"{path}: no such weights file or folder"
        raise WeightsError(msg)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # DeepSpeed's model file holds its config next to the weights and needs the full unpickler: its pickles are
    # checked against the allow-list first, so nothing in it can run. Everything else loads weights-only.
    try:
        if path.name == "mp_rank_00_model_states.pt":
            checkpoint_io.check_pickles(path)
            data: Any = torch.load(path, map_location="cpu", weights_only=False)
        else:
            data = checkpoint_io.load(path)
    except checkpoint_io.CheckpointError as e:
        raise WeightsError(str(e)) from e
    if isinstance(data, dict) and "module" in data:
        data = data["module"]
    if not isinstance(data, dict):
        msg = f"{path}: expected a state dict, found {type(data).__name__}"
        raise WeightsError(msg)
    return data


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load with every key and shape checked; the error lists what differs (at most 8 of each)."""
    state = {KEY_MAP.get(k, k): v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
              for k in sorted(set(own) & set(state)) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{title}: {', '.join(items[:8])}{more}")
        msg = (f"{source}: the weights do not match the model configuration (model_size, or the T5/SigLIP dims):\n  "
               + "\n  ".join(parts))
        raise WeightsError(msg)
    model.load_state_dict(state, strict=True)


def checkpoint_weights(folder: Path, which: str = "ema") -> Path:
    """The weights file of a checkpoint-<step>/ folder: the EMA (`ema`) or the trained model (`model`)."""
    if which == "ema" and (folder / "ema" / "model.safetensors").is_file():
        return folder / "ema" / "model.safetensors"
    for name in ("pytorch_model/mp_rank_00_model_states.pt", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    msg = f"{folder}: no model weights in this checkpoint"
    raise WeightsError(msg)
