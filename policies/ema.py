"""The EMA both policies inherit from diffusion_policy's EMAModel (DP3 and RDT copy it): its decay schedule, and
one EMA class over a model's weights. torch is imported only where an EMA is made."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ema_decay(updates_done: int, power: float = 0.75, inv_gamma: float = 1.0, max_value: float = 0.9999,
              min_value: float = 0.0) -> float:
    """Decay for the next update after `updates_done` updates: 0 for the first two, then
    1 - (1 + step / inv_gamma) ** -power clipped to [min_value, max_value], with step = updates_done - 1."""
    step = max(0, updates_done - 1)
    if step <= 0:
        return 0.0
    return float(max(min_value, min(max_value, 1 - (1 + step / inv_gamma) ** -power)))


#: The averages' file in an EMA folder (RDT's layout: `<checkpoint>/ema/model.safetensors`).
AVERAGES_FILE = "model.safetensors"


def save_averages(folder: Path, averages: dict[str, Any]) -> None:
    """Named averages as AVERAGES_FILE in `folder`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in averages.items()}, str(folder / AVERAGES_FILE))


def load_averages(folder: Path, names: Any) -> dict[str, Any]:
    """The averages save_averages wrote in `folder`, by name (ValueError unless they are exactly `names`)."""
    from safetensors.torch import load_file

    state = load_file(str(folder / AVERAGES_FILE))
    if set(state) != set(names):
        msg = f"{folder}: the EMA weights do not match the model"
        raise ValueError(msg)
    return state


class Ema:
    """The EMA of a model's weights with that schedule, one class for both policies. Two ways to hold it:

    - `Ema(model, copy_module=True)` (DP3): a frozen deep copy of the module, `ema.model`, whose parameters are the
      averages (it is what eval and deploy run, and what DP3's CUDA graph and ZeRO-1 update in place); parameters
      the model does not learn (its normaliser) are copied, not averaged.
    - `Ema(model)` (RDT): fp32 copies of the state dict by name (`ema.params`), saved as safetensors.

    `update(model)` averages from a module; `update_from(tensors)` from tensors in the same order (RDT's fused
    engine's fp32 masters). Either is one multi-tensor lerp. `steps` counts the updates done (the schedule's
    input); checkpoints keep it."""

    def __init__(self, model: Any, *, copy_module: bool = False, power: float = 0.75, inv_gamma: float = 1.0,
                 max_value: float = 0.9999) -> None:
        import copy

        import torch

        self.power, self.inv_gamma, self.max_value, self.steps = power, inv_gamma, max_value, 0
        self.model: Any = None
        if copy_module:
            self.model = copy.deepcopy(model).eval().requires_grad_(False)
            mine = dict(self.model.named_parameters())
            learned = [k for k, p in model.named_parameters() if p.requires_grad and p.numel()]
            self.params: dict[str, Any] = {k: mine[k] for k in learned}
            self.frozen = {k: v for k, v in mine.items() if k not in self.params}
        else:
            self.params = {k: v.detach().to(torch.float32).clone() for k, v in model.state_dict().items()}
            self.frozen = {}

    def decay(self) -> float:
        """The decay of the next update (from the updates done so far, as upstream: the count goes up after it)."""
        return ema_decay(self.steps, self.power, self.inv_gamma, self.max_value)

    def update(self, model: Any) -> None:
        """From a module's weights (any dtype; by name)."""
        import torch

        with torch.no_grad():
            source = dict(model.named_parameters()) if self.model is not None else model.state_dict()
            self.update_from([source[k].detach().to(v.dtype) for k, v in self.params.items()])
            for k, v in self.frozen.items():
                v.copy_(source[k])

    def update_from(self, tensors: list[Any]) -> None:
        """From tensors in `params` order: one multi-tensor lerp."""
        import torch

        with torch.no_grad():
            if self.params:
                torch._foreach_lerp_(list(self.params.values()), tensors, 1.0 - self.decay())
        self.steps += 1

    def to(self, device: Any) -> Ema:
        if self.model is not None:
            self.model.to(device)
            self.params = {k: v for k, v in self.model.named_parameters() if k in self.params}
            self.frozen = {k: v for k, v in self.model.named_parameters() if k in self.frozen}
        else:
            self.params = {k: v.to(device) for k, v in self.params.items()}
        return self

    def save(self, folder: Path) -> None:
        """The averages as AVERAGES_FILE in `folder` (RDT's layout: `<checkpoint>/ema/`)."""
        save_averages(folder, self.params)

    def load(self, folder: Path, steps: int) -> None:
        """The averages saved by `save`, and the count of updates they had (ValueError when they do not match)."""
        for k, v in load_averages(folder, self.params).items():
            self.params[k].copy_(v)
        self.steps = steps
