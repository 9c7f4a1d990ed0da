"""Read GELLO demonstrations: one pickle per control step (`<data_dir>/<agent>/<MMDD_HHMMSS>/<ISO time>.pkl`)
or one pickle per episode (a dict of stacked arrays, or a list of step dicts). Every problem is collected with
its episode, step and key, so a check lists all of them at once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from policies.convert_options import ConvertCommon
from robot.safe_pickle import UnsafePickleError, load_file
from runner.spec.models import default_of

REQUIRED = ("joint_positions", "control")


@dataclass(frozen=True)
class GelloOptions:
    """GELLO's Franka (Panda) driver quirks, made explicit (UPSTREAM.md §5)."""

    camera: str = default_of(ConvertCommon, "camera")  # the camera whose depth makes point clouds
    extra_cameras: tuple[str, ...] = ()  # more cameras whose RGB is kept (RDT's wrist slots)
    # The Panda driver copies joint positions into joint_velocities: derive them from positions and time.
    velocities: Literal["finite_difference", "recorded"] = default_of(ConvertCommon, "velocities")
    # Observation gripper 1.0 = open; the Panda command 1.0 = closed. Store commands in the observation's sense.
    command_gripper: Literal["closed_is_one", "open_is_one"] = default_of(ConvertCommon, "command_gripper")
    need_depth: bool = True

    @property
    def cameras(self) -> tuple[str, ...]:
        return (self.camera, *(c for c in self.extra_cameras if c != self.camera))


@dataclass
class Problem:
    episode: str
    step: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.episode + (f" step {self.step}" if self.step is not None else "")
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ProblemsError(ValueError):
    """Data that cannot be used; carries every problem found, and says that nothing was written."""

    what = "the data has problems"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(f"{self.what} (nothing was written):\n" + "\n".join(f"  {p}" for p in problems))


@dataclass
class Episode:
    """One demonstration, time-major, in the observation's gripper convention."""

    name: str
    source: Path
    timestamps: np.ndarray  # (T,) seconds
    joint_positions: np.ndarray  # (T, D) joints + gripper
    joint_velocities: np.ndarray  # (T, D)
    ee_pos_quat: np.ndarray  # (T, 7); zeros when the driver does not report it
    control: np.ndarray  # (T, D) commanded joints + gripper
    rgb: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8
    depth: np.ndarray | None  # (T, H, W) uint16 raw units
    problems: list[Problem] = field(default_factory=list)

    @property
    def length(self) -> int:
        return int(self.joint_positions.shape[0])


#: GELLO's SaveInterface names an episode folder strftime("%m%d_%H%M%S").
EPISODE_FOLDER = re.compile(r"^\d{4}_\d{6}$")


def find_episodes(raw: Path) -> list[Path]:
    """Episode sources under `raw`: folders of per-step pickles, and single-file episode pickles.

    Ordered by the first step's recorded time where the names carry it (GELLO's folder names lack the year)."""
    if not raw.is_dir():
        return []
    pickles = sorted(raw.rglob("*.pkl"))
    folders = sorted({p.parent for p in pickles if _step_time(p) is not None})
    singles = sorted(p for p in pickles if _step_time(p) is None and p.parent not in folders)

    def first_time(folder: Path) -> float:
        times = [t for p in folder.glob("*.pkl") if (t := _step_time(p)) is not None]
        return min(times) if times else 0.0

    return sorted(folders, key=lambda f: (first_time(f), str(f))) + singles


def empty_episode_folders(raw: Path) -> list[Path]:
    """GELLO episode folders (MMDD_HHMMSS) that hold no step at all: a recording that never got a frame."""
    if not raw.is_dir():
        return []
    return sorted(d for d in raw.rglob("*") if d.is_dir() and EPISODE_FOLDER.match(d.name)
                  and not any(d.glob("*.pkl")))


def _step_time(path: Path) -> float | None:
    try:
        return datetime.fromisoformat(path.stem).timestamp()
    except ValueError:
        return None


def read_episode(source: Path, opts: GelloOptions, name: str | None = None) -> Episode:
    """Load one episode; problems (missing keys, bad values, unsafe pickles) are collected, not raised."""
    label = name or source.name
    problems: list[Problem] = []
    steps, times = _load_steps(source, label, problems)
    return _assemble(label, source, steps, times, opts, problems)


def _load_steps(source: Path, label: str, problems: list[Problem]) -> tuple[list[dict[str, Any]], list[float]]:
    if source.is_dir():
        files = _step_files(source, label, problems)
        steps, times = [], []
        for i, (t, f) in enumerate(files):
            data = _load(f, label, i, problems)
            if isinstance(data, dict):
                steps.append(data)
                times.append(t)
            elif data is not None:
                problems.append(Problem(label, i, "", f"{f.name} holds a {type(data).__name__}; a GELLO step file is a "
                                                      "dict of arrays"))
        return steps, times
    data = _load(source, label, None, problems)
    if isinstance(data, list):
        return [s for s in data if isinstance(s, dict)], [float(i) for i in range(len(data))]
    if isinstance(data, dict):
        return _unstack(data, label, problems)
    if data is not None:
        problems.append(Problem(label, None, "", f"expected a dict or a list of step dicts, got {type(data).__name__}"))
    return [], []


def _step_files(folder: Path, label: str, problems: list[Problem]) -> list[tuple[float, Path]]:
    """The folder's step files in recorded-time order. A name that is not a time, a time recorded twice, or a
    file that is not a regular file is a problem: sorting it anywhere would reorder or pad the episode."""
    files: list[tuple[float, Path]] = []
    seen: dict[float, Path] = {}
    for p in sorted(folder.glob("*.pkl")):
        t = _step_time(p)
        if not p.is_file():
            problems.append(Problem(label, None, "", f"{p.name} is not a regular file (a FIFO or device?); not read"))
        elif t is None:
            problems.append(Problem(label, None, "", f"{p.name}: the name is not a recorded time (GELLO names each step "
                                                     "<ISO time>.pkl); rename or remove it"))
        elif t in seen:
            problems.append(Problem(label, None, "", f"{p.name} and {seen[t].name} are the same instant: a duplicated "
                                                     "step; remove one"))
        else:
            seen[t] = p
            files.append((t, p))
    return sorted(files)


def _load(path: Path, label: str, step: int | None, problems: list[Problem]) -> Any:
    if not path.is_file():
        problems.append(Problem(label, step, "", f"{path.name} is not a regular file (a FIFO or device?); not read"))
        return None
    try:
        return load_file(path)
    except UnsafePickleError as e:
        problems.append(Problem(label, step, "", str(e)))
    except Exception as e:  # noqa: BLE001 - any unreadable pickle is a data problem to report, not a crash
        problems.append(Problem(label, step, "", f"{path.name}: unreadable pickle ({type(e).__name__}: {e})"))
    return None


def _unstack(data: dict[str, Any], label: str, problems: list[Problem]) -> tuple[list[dict[str, Any]], list[float]]:
    lengths = {k: len(v) for k, v in data.items() if isinstance(v, np.ndarray) and v.ndim >= 1}
    if not lengths:
        problems.append(Problem(label, None, "", "no per-step arrays in this episode file"))
        return [], []
    t = lengths.get("joint_positions", max(lengths.values()))
    for k, n in lengths.items():
        if n != t and k != "timestamps":
            problems.append(Problem(label, None, k, f"has {n} steps, joint_positions has {t}"))
    steps = [{k: v[i] for k, v in data.items() if k in lengths and lengths[k] == t} for i in range(t)]
    times = [float(x) for x in data["timestamps"]] if "timestamps" in data and len(data["timestamps"]) == t else \
        [float(i) for i in range(t)]
    return steps, times


def _assemble(label: str, source: Path, steps: list[dict[str, Any]], times: list[float], opts: GelloOptions,
              problems: list[Problem]) -> Episode:
    if len(steps) < 2:
        problems.append(Problem(label, None, "", f"{len(steps)} step(s): an episode needs at least 2"))
    keys = [*REQUIRED, *(f"{c}_rgb" for c in opts.cameras)] + ([f"{opts.camera}_depth"] if opts.need_depth else [])
    for i, s in enumerate(steps):
        for k in keys:
            if k not in s:
                hint = " (point clouds need depth: was the camera's depth stream recorded?)" if k.endswith("_depth") else ""
                problems.append(Problem(label, i, k, f"missing{hint}; the step has {', '.join(sorted(s))}"))
    stack = {k: _stack(steps, k, label, problems) for k in
             ("joint_positions", "control", "joint_velocities", "ee_pos_quat", f"{opts.camera}_depth",
              *(f"{c}_rgb" for c in opts.cameras))}
    t = np.asarray(times, dtype=np.float64)
    qpos = stack["joint_positions"]
    empty = np.zeros((len(steps), 0))
    qpos = qpos.astype(np.float64) if qpos is not None else empty
    control = stack["control"].astype(np.float64) if stack["control"] is not None else empty
    if control.shape[1:] and qpos.shape[1:] and control.shape[1:] != qpos.shape[1:]:
        problems.append(Problem(label, None, "control", f"dim {control.shape[1:]} differs from joint_positions {qpos.shape[1:]}"))
    if control.size and opts.command_gripper == "closed_is_one":
        control = control.copy()
        control[:, -1] = 1.0 - control[:, -1]
    for k, v in (("joint_positions", qpos), ("control", control)):
        bad: np.ndarray = np.argwhere(~np.isfinite(v)) if v.size else np.zeros((0, 2), np.int64)
        if len(bad):
            problems.append(Problem(label, int(bad[0][0]), k, f"{len(bad)} NaN/inf value(s), first at step {bad[0][0]}"))
    vel = _velocities(qpos, t, stack["joint_velocities"], opts)
    ee = stack["ee_pos_quat"] if stack["ee_pos_quat"] is not None else np.zeros((len(steps), 7))
    depth = stack[f"{opts.camera}_depth"]
    if depth is not None and depth.ndim == 4:
        depth = depth[..., 0]
    rgb = {c: img for c in opts.cameras if (img := stack[f"{c}_rgb"]) is not None}
    return Episode(label, source, t, qpos, vel, np.asarray(ee, np.float64), control, rgb, depth, problems)


def _stack(steps: list[dict[str, Any]], key: str, label: str, problems: list[Problem]) -> np.ndarray | None:
    values = [s.get(key) for s in steps]
    present = [v for v in values if v is not None]
    if not present or len(present) != len(values):
        return None
    kinds = {np.asarray(v).dtype.kind for v in present}
    if not kinds <= set("biuf"):
        i = next(i for i, v in enumerate(present) if np.asarray(v).dtype.kind not in "biuf")
        problems.append(Problem(label, i, key, f"holds {np.asarray(present[i]).dtype} values, not numbers"))
        return None
    shapes = {np.shape(v) for v in present}
    if len(shapes) > 1:
        first = np.shape(present[0])
        i = next(i for i, v in enumerate(present) if np.shape(v) != first)
        problems.append(Problem(label, i, key, f"shape {np.shape(present[i])} differs from step 0's {first}"))
        return None
    return np.stack([np.asarray(v) for v in present])


def _velocities(qpos: np.ndarray, t: np.ndarray, recorded: np.ndarray | None, opts: GelloOptions) -> np.ndarray:
    if opts.velocities == "recorded" and recorded is not None and recorded.shape == qpos.shape:
        return recorded.astype(np.float64)
    if len(qpos) < 2:
        return np.zeros_like(qpos)
    dt = np.diff(t)
    dt[dt <= 0] = np.median(dt[dt > 0]) if (dt > 0).any() else 1.0
    v = np.diff(qpos, axis=0) / dt[:, None]
    return np.concatenate([v[:1], v], axis=0) if len(v) else np.zeros_like(qpos)
