"""The EMA decay schedule both policies inherit from diffusion_policy's EMAModel (DP3 and RDT copy it)."""

from __future__ import annotations


def ema_decay(updates_done: int, power: float = 0.75, inv_gamma: float = 1.0, max_value: float = 0.9999,
              min_value: float = 0.0) -> float:
    """Decay for the next update after `updates_done` updates: 0 for the first two, then
    1 - (1 + step / inv_gamma) ** -power clipped to [min_value, max_value], with step = updates_done - 1."""
    step = max(0, updates_done - 1)
    if step <= 0:
        return 0.0
    return float(max(min_value, min(max_value, 1 - (1 + step / inv_gamma) ** -power)))
