"""The DP3 replay buffer in (GPU) memory and a window sampler that needs no DataLoader workers and no /dev/shm.

Windows are upstream's SequenceSampler windows (pad_before = n_obs_steps - 1, pad_after = n_action_steps - 1,
edge frames repeated at episode boundaries), precomputed as one (W, horizon) table of frame indices: a batch is
one gather on the device.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from policies.signals import ignore_stop_signals, stop_workers


class DataShapeError(ValueError):
    """The job pins a dimension the data does not have (checked before any model is built)."""


@dataclass
class ReplayData:
    path: Path
    point_cloud: torch.Tensor  # (N, P, C)
    state: torch.Tensor  # (N, D)
    action: torch.Tensor  # (N, A)
    episode_ends: np.ndarray  # (E,) int64

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    def to(self, device: torch.device) -> ReplayData:
        return ReplayData(self.path, self.point_cloud.to(device), self.state.to(device), self.action.to(device),
                          self.episode_ends)


def find_buffer(converted: Path, task: str, config: str, name: str | None = None) -> Path:
    """The zarr replay buffer of this task and config under `converted` (exactly one, or the one named)."""
    if name:
        path = converted / (name if name.endswith(".zarr") else f"{name}.zarr")
        if not path.is_dir():
            msg = f"steps.train.dataset: {path} does not exist; run `runner convert` first"
            raise FileNotFoundError(msg)
        return path
    found = sorted(converted.glob(f"{task}-{config}-*.zarr"))
    if not found:
        msg = f"no DP3 replay buffer {task}-{config}-<n>.zarr in {converted}; run `runner convert JOB` first"
        raise FileNotFoundError(msg)
    if len(found) > 1:
        msg = (f"several replay buffers in {converted}: {', '.join(p.name for p in found)}; "
               "name one with steps.train.dataset")
        raise FileNotFoundError(msg)
    return found[0]


def load_buffer(path: Path) -> ReplayData:
    """Read the whole buffer into memory with the zarr 2 API, as upstream's ReplayBuffer.copy_from_path does."""
    import zarr

    root = zarr.open(str(path), "r")
    ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64)
    arrays = {k: torch.from_numpy(np.asarray(root["data"][k][:], dtype=np.float32)) for k in ("point_cloud", "state", "action")}
    for k, v in arrays.items():
        if len(v) != int(ends[-1]):
            msg = f"{path}: data/{k} has {len(v)} samples, meta/episode_ends says {int(ends[-1])}"
            raise DataShapeError(msg)
    return ReplayData(path, arrays["point_cloud"], arrays["state"], arrays["action"], ends)


def check_dims(data: ReplayData, pinned: dict[str, int | None], job_file: str) -> None:
    """Refuse a job that pins a dimension different from the data, naming both numbers and where they came from."""
    actual = {"state_dim": data.state.shape[1], "action_dim": data.action.shape[1], "num_points": data.point_cloud.shape[1]}
    where = {"state_dim": "data/state", "action_dim": "data/action", "num_points": "data/point_cloud"}
    bad = [f"steps.train.{k} is {v} in {job_file}, but {data.path.name}:{where[k]} has shape "
           f"{tuple(getattr(data, where[k].split('/')[1]).shape)} -> {actual[k]}"
           for k, v in pinned.items() if v is not None and v != actual[k]]
    if bad:
        msg = "the job and the data disagree (remove the pinned value to take it from the data):\n  " + "\n  ".join(bad)
        raise DataShapeError(msg)


def val_mask(n_episodes: int, val_ratio: float, seed: int) -> np.ndarray:
    """Episodes held out for validation, as upstream's get_val_mask (at least one kept for training)."""
    mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0 or n_episodes < 2:
        return mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    rng = np.random.default_rng(seed=seed)
    mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    return mask


def window_table(episode_ends: np.ndarray, episodes: np.ndarray, horizon: int, pad_before: int, pad_after: int
                 ) -> torch.Tensor:
    """(W, horizon) frame indices of every window of the chosen episodes, edges clamped (= repeated)."""
    rows = []
    starts = np.concatenate([[0], episode_ends[:-1]])
    offsets = np.arange(horizon)
    for e in np.nonzero(episodes)[0]:
        s, end = int(starts[e]), int(episode_ends[e])
        length = end - s
        first = np.arange(-pad_before, length - horizon + pad_after + 1)
        if len(first):
            rows.append(np.clip(first[:, None] + offsets[None, :], 0, length - 1) + s)
    if not rows:
        return torch.zeros((0, horizon), dtype=torch.long)
    return torch.from_numpy(np.concatenate(rows).astype(np.int64))


class WindowSampler:
    """Batches of windows gathered on the data's device."""

    def __init__(self, data: ReplayData, table: torch.Tensor) -> None:
        self.data = data
        self.table = table.to(data.state.device)

    def __len__(self) -> int:
        return len(self.table)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.table[rows.to(self.table.device)]  # (B, T)
        flat = idx.reshape(-1)
        b, t = idx.shape
        pc = self.data.point_cloud.index_select(0, flat).reshape(b, t, *self.data.point_cloud.shape[1:])
        pos = self.data.state.index_select(0, flat).reshape(b, t, -1)
        act = self.data.action.index_select(0, flat).reshape(b, t, -1)
        return pc, pos, act


class _BatchWindows(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Whole batches cut in DataLoader workers from the buffer in host memory (they travel through /dev/shm)."""

    def __init__(self, sampler: WindowSampler, batches: list[torch.Tensor]) -> None:
        self.sampler, self.batches = sampler, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.sampler.batch(self.batches[i])


def worker_batches(sampler: WindowSampler, batches: list[torch.Tensor], workers: int, device: torch.device
                   ) -> Generator[tuple[torch.Tensor, torch.Tensor, torch.Tensor], None, None]:
    """The given batches, in order, cut by `workers` processes and moved to `device` (upstream's way, for data
    kept in host memory; the runner sizes /dev/shm for it from num_workers)."""
    loader = torch.utils.data.DataLoader(_BatchWindows(sampler, batches), batch_size=None, shuffle=False,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         worker_init_fn=ignore_stop_signals)
    it = iter(loader)
    try:
        for pc, pos, act in it:
            yield (pc.to(device, non_blocking=True), pos.to(device, non_blocking=True),
                   act.to(device, non_blocking=True))
    finally:
        stop_workers(it)  # left early (max_steps or a stop inside the epoch), or done: the workers go now
