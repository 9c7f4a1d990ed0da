"""Episode HDF5 files -> the per-episode HDF5 RoboTwin's RDT reader takes (UPSTREAM.md §4), plus instruction
embeddings beside each episode:

    <out>/episode_<i>/episode_<i>.hdf5
        action (T', D) f32, observations/qpos (T', D) f32             (RoboTwin's shift: qpos[t] -> qpos[t+1])
        observations/images/{cam_high,cam_right_wrist,cam_left_wrist} (T',) JPEG at the job's size
        observations/images_mask/<slot> (T',) bool                     a slot the robot lacks: black, masked
        observations/left_arm_dim, observations/right_arm_dim (T',) int
    <out>/episode_<i>/instructions/lang_embed_<k>.pt                    (L, d_model) tensors, no batch dim
    <out>/empty_lang_embed.pt                                           the empty instruction's embedding
A camera the robot does not have is padded (a black frame) and masked, never a copy of another camera.
An episode whose joints never move more than upstream's threshold is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from policies.data.demos import Problem, ProblemsError
from policies.data.episodes import is_complete, read_attrs
from policies.data.transform import shift_actions
from robot.formats import decode_jpeg, encode_jpeg
from runner.atomic import replace_dir

SLOTS = ("cam_high", "cam_right_wrist", "cam_left_wrist")
#: RDT's reader starts an episode at the first step where some joint moved more than this (else ValueError).
MOVE_EPS = 1e-2


class RdtDataError(ProblemsError):
    what = "cannot build the RDT data"


@dataclass
class RdtReport:
    path: Path
    episodes: int
    samples: int
    state_dim: int


def write_rdt(episodes: list[Path], out: Path, cameras: dict[str, str], image_size: tuple[int, int],
              embeddings: list[Any] | None = None, instructions: tuple[str, ...] = (),
              empty_embedding: Any = None) -> RdtReport:
    """Build `out` from episode files, atomically (temp folder, then rename). `cameras`: slot -> recorded camera."""
    loaded, problems = [], []
    for path in episodes:
        ep, errs = _load(path, cameras)
        loaded.append(ep)
        problems += errs
    if problems:
        raise RdtDataError(problems)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    samples = 0
    for i, ep in enumerate(loaded):
        folder = tmp / f"episode_{i}"
        samples += _write_episode(folder / f"episode_{i}.hdf5", ep, cameras, image_size)
        if embeddings:
            _write_embeddings(folder / "instructions", embeddings, instructions)
    if empty_embedding is not None:  # the dropped instruction (cond_mask_prob) during fine-tuning
        import torch

        torch.save(empty_embedding, tmp / "empty_lang_embed.pt")
    replace_dir(tmp, out)
    return RdtReport(out, len(loaded), samples, int(loaded[0]["vector"].shape[1]) if loaded else 0)


def _load(path: Path, cameras: dict[str, str]) -> tuple[dict[str, Any], list[Problem]]:
    name = path.stem
    if not is_complete(path):
        return {}, [Problem(name, None, "", f"{path} is missing or incomplete; re-run convert")]
    attrs = read_attrs(path)
    with h5py.File(path, "r") as f:
        ep: dict[str, Any] = {"name": name, "attrs": attrs, "vector": f["joint_action/vector"][()].astype(np.float32),
                              "control": f["joint_action/control"][()].astype(np.float32), "images": {}}
        problems = []
        for slot, cam in cameras.items():
            key = f"observation/{cam}/rgb"
            if key not in f:
                problems.append(Problem(name, None, key, f"missing: camera {cam!r} (slot {slot}) was not converted"))
                continue
            ep["images"][slot] = list(f[key][()])
    moved = np.abs(ep["vector"] - ep["vector"][:1]).max() if len(ep["vector"]) else 0.0
    if moved <= MOVE_EPS:
        problems.append(Problem(name, None, "joint_action/vector", f"the joints never move more than {MOVE_EPS} "
                                "(RDT's reader raises 'Found no qpos that exceeds the threshold' on it)"))
    for slot, jpegs in ep["images"].items():
        try:
            decode_jpeg(jpegs[0])
        except Exception as e:  # noqa: BLE001 - any decoder failure is a data problem
            problems.append(Problem(name, 0, f"observation/{cameras[slot]}/rgb", f"unreadable JPEG ({e})"))
    return ep, problems


def _write_episode(path: Path, ep: dict[str, Any], cameras: dict[str, str], size: tuple[int, int]) -> int:
    state, action, n = shift_actions(ep["vector"], ep["control"], str(ep["attrs"].get("action_source", "next_state")))
    path.parent.mkdir(parents=True, exist_ok=True)
    black = encode_jpeg(np.zeros((size[1], size[0], 3), np.uint8))
    with h5py.File(path, "w") as f:
        f["action"] = action.astype(np.float32)
        f["observations/qpos"] = state.astype(np.float32)
        d = state.shape[1]
        f["observations/left_arm_dim"] = np.zeros(n, np.int64)
        f["observations/right_arm_dim"] = np.full(n, d - 1, np.int64)  # 7 joints; the last entry is the gripper
        for slot in SLOTS:
            if slot in ep["images"]:
                jpegs = [_resized(j, size) for j in ep["images"][slot][:n]]
                mask = np.ones(n, bool)
            else:
                jpegs, mask = [black] * n, np.zeros(n, bool)
            width = max(len(j) for j in jpegs)
            f.create_dataset(f"observations/images/{slot}", data=np.array(jpegs, dtype=f"S{width}"))
            f[f"observations/images_mask/{slot}"] = mask
        conv = {k: v for k, v in ep["attrs"].items() if k not in ("fingerprint", "kept_frames", "source")}
        f.attrs["conversion"] = json.dumps(conv, default=str)
        f.attrs["state_layout"] = "franka: right arm joints 0..6 -> unified 0..6, gripper -> 10"
        f.attrs["camera_slots"] = json.dumps(cameras)
    return n


def _resized(jpeg: bytes, size: tuple[int, int]) -> bytes:
    img = decode_jpeg(jpeg)
    if (img.shape[1], img.shape[0]) == size:
        return bytes(jpeg)
    return encode_jpeg(img, size=size)


def _write_embeddings(folder: Path, embeddings: list[Any], instructions: tuple[str, ...]) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for k, emb in enumerate(embeddings):
        torch.save(emb, folder / f"lang_embed_{k}.pt")
    (folder / "instructions.json").write_text(json.dumps({"instructions": list(instructions)}, indent=2))
