"""Training lineages: every fresh `runner train` writes its checkpoints to a folder of its own,
`checkpoints/<run id>/`, so keep-last-K and best never touch another run's checkpoints, and a resume never picks
up a checkpoint of another training by accident.

`runner resume JOB` continues the lineage written most recently (a Slurm requeue, too); `--from NAME` continues
the lineage NAME (a run id, or a `superseded-*` folder of older runs); `--from PATH` starts a new lineage from
that checkpoint (a branch: the lineage it came from is left as it is). Checkpoints written before lineages (directly
in `checkpoints/`) are the lineage `.`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LEGACY = "."


class LineageError(ValueError):
    """`--from` names neither a lineage nor a checkpoint."""


@dataclass(frozen=True)
class Choice:
    folder: Path  # where this run reads and writes its checkpoints
    start: Path | None  # a checkpoint to start from (a branch), else the folder's newest
    resume: bool  # look for a checkpoint to continue at all
    note: str  # what the step says about it


def main_rank() -> bool:
    """Whether this process says the step's notes: global rank 0 of torchrun or accelerate (RANK), or the only one."""
    return os.environ.get("RANK", "0") == "0"


def lineages(root: Path, pattern: str) -> list[Path]:
    """Folders under `root` (and `root` itself, for old checkpoints) that hold `pattern` checkpoints, newest
    write last."""
    if not root.is_dir():
        return []
    found = [d for d in (root, *sorted(p for p in root.iterdir() if p.is_dir())) if any(d.glob(pattern))]
    return sorted(found, key=lambda d: max(p.stat().st_mtime for p in d.glob(pattern)))


def name(root: Path, folder: Path) -> str:
    return LEGACY if folder == root else folder.name


def choose(root: Path, run_id: str, resume: bool, start_from: str | None, pattern: str) -> Choice:
    """Where a training run keeps its checkpoints and what it continues from."""
    known = lineages(root, pattern)
    names = ", ".join(name(root, d) for d in known) or "none"
    if start_from:
        by_name = root if start_from == LEGACY else root / start_from
        if by_name in known:
            return Choice(by_name, None, True, f"train: continuing lineage {start_from}")
        path = Path(start_from) if Path(start_from).is_absolute() else root / start_from
        if path.exists():
            return Choice(root / run_id, path, True, f"train: a new lineage {run_id}, starting from {path}")
        msg = f"--from {start_from}: no lineage or checkpoint of that name in {root} (lineages: {names})"
        raise LineageError(msg)
    if resume:
        if known:
            return Choice(known[-1], None, True, f"train: continuing the newest lineage {name(root, known[-1])}")
        return Choice(root / run_id, None, False, f"train: nothing to resume in {root}; a new lineage {run_id}")
    note = f"train: a new lineage {run_id}"
    if known:
        note += (f"; earlier lineages kept: {names} (continue one with `runner resume JOB --from NAME`, the newest "
                 "with `runner resume JOB`)")
    return Choice(root / run_id, None, False, note)


def newest(root: Path, pattern: str) -> Path:
    """The lineage eval and deploy read ('latest' and 'best' are its); the root itself when there is none."""
    known = lineages(root, pattern)
    return known[-1] if known else root
