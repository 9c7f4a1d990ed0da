"""GELLO demos -> episode HDF5 files: checked first (every problem listed, nothing written), converted in
parallel into a staging folder (an interrupted run resumes there), published by one rename when complete."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policies.convert_options import ConvertCommon
from policies.data.demos import (
    Episode,
    GelloOptions,
    Problem,
    ProblemsError,
    empty_episode_folders,
    find_episodes,
    read_episode,
)
from policies.data.episodes import EpisodeData, episode_path, is_complete, write_episode
from policies.data.pointcloud import CloudSpec, TooFewPointsError, clouds
from policies.data.transform import TimeOptions, select_frames
from policies.metrics import progress as bar_text
from robot.formats import binarize, encode_jpeg
from runner.atomic import free_bytes, remove_stale_temps, replace_dir, write_text_atomic
from runner.spec.models import default_of

STAGING = ".staging"
STORAGE = "<storage>"  # Problem.key of a worker's failed write (its step field carries the errno)
CLOUD_CHUNK = 16  # frames per point-cloud batch: bounds memory at 480x640


class ConversionError(ProblemsError):
    what = "problems in the recorded demos"


@dataclass(frozen=True)
class ConvertOptions:
    task: str
    config: str = default_of(ConvertCommon, "config")
    gello: GelloOptions = field(default_factory=GelloOptions)
    time: TimeOptions = field(default_factory=TimeOptions)
    cloud: CloudSpec | None = None  # None: no point clouds in the episodes
    jpeg_quality: int = default_of(ConvertCommon, "jpeg_quality")
    image_size: tuple[int, int] | None = None  # (width, height) for the stored JPEGs
    workers: int = default_of(ConvertCommon, "workers")
    instructions: tuple[str, ...] = ()

    def attrs(self) -> dict[str, Any]:
        """What goes into every output's attributes (and so into training and deploy)."""
        out: dict[str, Any] = {"task": self.task, "config": self.config, "camera": self.gello.camera,
                               "cameras": list(self.gello.cameras),
                               "velocities": self.gello.velocities, "command_gripper": self.gello.command_gripper,
                               "jpeg_quality": self.jpeg_quality, "image_size": self.image_size, **self.time.attrs()}
        out["pointcloud"] = asdict(self.cloud) if self.cloud else None
        if self.cloud:
            out["depth_scale"] = self.cloud.depth_scale
        return out


@dataclass
class ConvertReport:
    episodes: list[Path]
    skipped: int
    frames_in: int
    frames_out: int
    seconds: float


Progress = Callable[[str], None]


def check(raw: Path, opts: ConvertOptions) -> list[Problem]:
    """Every problem in the demos under `raw`, in episode order; writes nothing."""
    sources = find_episodes(raw)
    empty = [Problem(str(d.relative_to(raw)), None, "", "an episode folder with no steps (the recording never got a "
                     "frame): remove it, or record the episode again") for d in empty_episode_folders(raw)]
    if not sources:
        return [*empty, Problem(str(raw), None, "", "no recorded episodes (*.pkl) found here")]
    with _pool(opts.workers) as pool:
        results = list(pool.map(_check_one, sources, [opts] * len(sources)))
    return empty + [p for r, _ in results for p in r] + _dim_problems([(s.name, d) for s, (_, d) in zip(sources, results,
                                                                                                        strict=True)])


def _check_one(source: Path, opts: ConvertOptions) -> tuple[list[Problem], dict[str, tuple[int, ...]]]:
    ep = read_episode(source, opts.gello)
    problems = list(ep.problems)
    if not problems and opts.cloud is not None and ep.depth is not None:
        problems += _cloud_problems(ep, opts.cloud)
    dims = {"joint_positions": tuple(ep.joint_positions.shape[1:]), "control": tuple(ep.control.shape[1:])}
    return problems, dims


def _dim_problems(dims: list[tuple[str, dict[str, tuple[int, ...]]]]) -> list[Problem]:
    """Episodes whose state or action dims differ from the first episode's: one dataset needs one shape."""
    out = []
    first_name, first = dims[0] if dims else ("", {})
    for name, d in dims[1:]:
        for key, shape in d.items():
            if shape and first.get(key) and shape != first[key]:
                out.append(Problem(name, None, key, f"dim {shape} differs from {first[key]} in {first_name}: every "
                                   "episode of a dataset has the same joints"))
    return out


def _cloud_problems(ep: Episode, spec: CloudSpec) -> list[Problem]:
    assert ep.depth is not None
    valid = ep.depth > 0
    if spec.crop_min is None and spec.crop_max is None:
        few = np.nonzero(valid.reshape(len(valid), -1).sum(1) < spec.num_points)[0]
        return [Problem(ep.name, int(few[0]), "depth", f"{len(few)} frame(s) with fewer than {spec.num_points} "
                        "valid depth pixels")] if len(few) else []
    return []


def convert(raw: Path, out: Path, opts: ConvertOptions, progress: Progress = lambda s: None) -> ConvertReport:
    """Check, convert every episode (resuming a staged run), publish `<out>/<task>/<config>/` in one rename."""
    t0 = time.perf_counter()
    sources = find_episodes(raw)
    jobs = [(i, src, _fingerprint(src, opts)) for i, src in enumerate(sources)]
    published = [episode_path(out, opts.task, opts.config, i) for i in range(len(sources))]
    extra = episode_path(out, opts.task, opts.config, len(sources))
    if sources and not extra.exists() and all(is_complete(p, fp) for p, (_, _, fp) in zip(published, jobs, strict=True)):
        progress(f"convert: {len(sources)} episodes up to date in {published[0].parent.parent}")
        return ConvertReport(published, len(sources), 0, 0, time.perf_counter() - t0)
    problems = check(raw, opts)
    if problems:
        raise ConversionError(problems)
    stage = out / STAGING
    if stage.is_dir():
        remove_stale_temps(stage, recursive=True)  # the half-written files of a killed worker
    todo = [j for j in jobs if not is_complete(episode_path(stage, opts.task, opts.config, j[0]), j[2])]
    progress(f"convert: {len(sources)} episodes, {len(jobs) - len(todo)} already staged")
    frames_in = frames_out = 0
    t_start = time.perf_counter()
    try:
        with _pool(opts.workers) as pool:
            futures = [pool.submit(_convert_one, i, src, fp, stage, opts) for i, src, fp in todo]
            for n, fut in enumerate(futures, 1):
                name, t_in, t_out, errors = fut.result()
                for err in errors:
                    if err.key == STORAGE:
                        raise storage_error(OSError(err.step, err.message), out)
                if errors:
                    raise ConversionError(errors)
                frames_in, frames_out = frames_in + t_in, frames_out + t_out
                elapsed = max(1e-9, time.perf_counter() - t_start)
                bar = bar_text(n, len(todo), n / elapsed, 1)  # the time left from episodes a second
                progress(f"convert: episode {n}/{len(todo)} {bar} {frames_in / elapsed:.0f} frames/s; "
                         f"{name}: {t_in} frames -> {t_out}")
        _write_instructions(stage, opts, len(sources))
        final = _publish(stage, out, opts)
    except (OSError, BrokenProcessPool) as e:
        raise storage_error(e, out) from e
    files = [episode_path(out, opts.task, opts.config, i) for i in range(len(sources))]
    progress(f"convert: published {final}")
    return ConvertReport(files, len(jobs) - len(todo), frames_in, frames_out, time.perf_counter() - t0)


class StorageError(ConversionError):
    what = "the conversion could not be written"


def storage_error(e: BaseException, out: Path) -> StorageError:
    """A full disk, a write limit or a dead worker as one message naming the folder; the staged episodes stay,
    so the next convert resumes, and nothing was published."""
    free = free_bytes(out)
    enospc = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    if enospc or free < 64 * 1024**2:
        why = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else "no space left"
        msg = (f"{why} on {out} ({free // 1024**2} MB free): free space, lift the quota or point data.converted at "
               "a bigger disk, then run convert again (the episodes already staged are kept)")
    elif isinstance(e, BrokenProcessPool):
        msg = ("a conversion worker died (killed, out of memory, or a file size limit?); run convert again (staged "
               "episodes are kept), or lower steps.convert.workers")
    else:
        msg = f"cannot write under {out}: {e}"
    return StorageError([Problem(str(out), None, "", msg)])


def _pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing

    return ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn"))


def _fingerprint(source: Path, opts: ConvertOptions) -> str:
    h = hashlib.sha256(json.dumps(opts.attrs(), sort_keys=True, default=str).encode())
    files = sorted(source.glob("*.pkl")) if source.is_dir() else [source]
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def _convert_one(index: int, source: Path, fingerprint: str, stage: Path, opts: ConvertOptions
                 ) -> tuple[str, int, int, list[Problem]]:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, opts.workers)))
    ep = read_episode(source, opts.gello)
    if ep.problems:
        return ep.name, ep.length, 0, ep.problems
    gripper = ep.joint_positions[:, -1]
    keep = select_frames(ep.joint_positions, gripper, opts.time)
    if opts.time.binarize_gripper:
        gripper = binarize(gripper, opts.time.gripper_threshold)
        control_grip = binarize(ep.control[:, -1], opts.time.gripper_threshold)
    else:
        control_grip = ep.control[:, -1]
    control = np.concatenate([ep.control[:, :-1], control_grip[:, None]], axis=1)
    pc = None
    if opts.cloud is not None and ep.depth is not None:
        try:
            pc = _episode_clouds(ep.depth[keep], ep.rgb[opts.gello.camera][keep], opts.cloud)
        except TooFewPointsError as e:
            return ep.name, ep.length, 0, [Problem(ep.name, int(keep[e.frame]), "depth", str(e).split(": ", 1)[1])]
    data = EpisodeData(
        ee_pos_quat=ep.ee_pos_quat[keep], gripper=gripper[keep], positions=ep.joint_positions[keep, :-1],
        velocities=ep.joint_velocities[keep], control=control[keep], timestamps=ep.timestamps[keep],
        camera=opts.gello.camera,
        jpegs={cam: [encode_jpeg(img, opts.jpeg_quality, opts.image_size) for img in frames[keep]]
               for cam, frames in ep.rgb.items()},
        depth=ep.depth[keep] if ep.depth is not None else None, pointcloud=pc,
        attrs={**opts.attrs(), "source": str(source), "fingerprint": fingerprint, "source_frames": ep.length,
               "kept_frames": [int(k) for k in keep]})
    target = episode_path(stage, opts.task, opts.config, index)
    try:
        write_episode(target, data)
    except OSError as e:  # returned, not raised: h5py's OSError does not always survive the trip to the parent
        return ep.name, ep.length, 0, [Problem(ep.name, e.errno, STORAGE, f"cannot write {target}: {e.strerror or e}")]
    return ep.name, ep.length, len(keep), []


def _episode_clouds(depth: np.ndarray, rgb: np.ndarray, spec: CloudSpec) -> np.ndarray:
    parts = [clouds(depth[i:i + CLOUD_CHUNK], rgb[i:i + CLOUD_CHUNK], spec, first_frame=i)
             for i in range(0, len(depth), CLOUD_CHUNK)]
    return np.concatenate(parts, axis=0)


def _write_instructions(stage: Path, opts: ConvertOptions, n: int) -> None:
    folder = stage / opts.task / opts.config / "instructions"
    for i in range(n):
        write_text_atomic(folder / f"episode{i}.json", json.dumps({"seen": list(opts.instructions), "unseen": []}, indent=2))


def _publish(stage: Path, out: Path, opts: ConvertOptions) -> Path:
    """Swap the staged task/config folder into place; the previous one is removed only after the swap."""
    dst = out / opts.task / opts.config
    replace_dir(stage / opts.task / opts.config, dst)
    shutil.rmtree(stage, ignore_errors=True)
    return dst
