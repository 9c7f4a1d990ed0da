"""One lineage folder of checkpoints, whatever a policy writes into each entry: entries named by their step (DP3:
`step-<n>.ckpt` files, RDT: `checkpoint-<n>/` folders), found by step (not name order or mtime), the newest one
that is complete and verifies, pruning to a limit, and the refusal of another job's or another model's checkpoint.
A policy's store says how an entry is written, when it is complete and how it is verified
(policies/dp3/checkpoints.py, policies/rdt/checkpoints.py); everything else is here, once."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def human_bytes(size: float) -> str:
    """A disk size as a person reads it: 22.1 GB, 35.9 MB, 1.5 kB."""
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} bytes"


def checkpoints_to_come(step: int, total: int, period: int) -> int:
    """Checkpoints a run at `step` still writes: every `period` steps up to `total`, and one at `total`."""
    if step >= total:
        return 0
    return total // period - step // period + (1 if total % period else 0)


class CheckpointStore:
    """The checkpoints of one lineage folder. Subclasses set `pattern` (one group: the step) and override
    `incomplete` and `check`."""

    pattern: re.Pattern[str]  # each store's names, one group: the step

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, step: int) -> Path:
        """Where the checkpoint of `step` lives (subclasses name it)."""
        raise NotImplementedError

    def incomplete(self, path: Path) -> str | None:
        """Why the entry at `path` is not a finished write (a folder without its marker), or None."""
        return None

    def check(self, path: Path, expect: Mapping[str, Any] | None) -> str | None:
        """Why the complete entry at `path` must not be loaded (altered, unsafe, another job's or model's), or None."""
        return None

    def entries(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete entry, newest step first; unfinished ones are reported and skipped."""
        found = []
        for p in self.folder.iterdir() if self.folder.is_dir() else []:
            m = self.pattern.match(p.name)
            if not m:
                continue
            why = self.incomplete(p)
            if why:
                log.warning(f"skipping {p}: {why}")
                continue
            found.append((int(m.group(1)), p))
        return sorted(found, reverse=True)

    def latest(self, expect: Mapping[str, Any] | None = None) -> tuple[int, Path] | None:
        """The newest complete entry that verifies (and, with `expect` ({"job", "model"}), is this job's and model's);
        every newer one is skipped with a warning that says why."""
        for step, path in self.entries():
            why = self.check(path, expect)
            if why is None:
                return step, path
            log.warning(f"skipping {path}: {why}")
        return None

    def prune(self, keep: int) -> list[Path]:
        """Remove the oldest complete entries beyond the newest `keep`; returns what was removed."""
        removed = []
        for _, path in self.entries()[keep:]:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    def resolve(self, which: str, expect: Mapping[str, Any] | None = None) -> Path:
        """'latest' (the newest that verifies), or a path relative to the folder (or absolute) -> an entry."""
        if which == "latest":
            found = self.latest(expect)
            if found is None:
                msg = f"no complete checkpoint in {self.folder}; train first (`runner train JOB`)"
                raise FileNotFoundError(msg)
            return found[1]
        path = Path(which)
        path = path if path.is_absolute() else self.folder / path
        if not path.exists():
            msg = f"checkpoint {path} does not exist"
            raise FileNotFoundError(msg)
        return path


def mismatch(recorded: Mapping[str, Any], expect: Mapping[str, Any]) -> str | None:
    """Why a checkpoint whose recorded config is `recorded` ({"job", "model"}) belongs to another job or model
    configuration than `expect`, or None. Model fields only one side records (added since) are not compared."""
    if expect.get("job") is not None and recorded.get("job") not in (None, expect["job"]):
        return f"it was written by job {recorded.get('job')!r}, not {expect['job']!r}"
    mine, theirs = dict(expect.get("model") or {}), dict(recorded.get("model") or {})
    differ = [k for k in sorted(set(mine) & set(theirs)) if plain_json(mine[k]) != plain_json(theirs[k])]
    if differ:
        shown = ", ".join(f"{k} {plain_json(theirs[k])} (job: {plain_json(mine[k])})" for k in differ[:4])
        return f"its model configuration differs: {shown}"
    return None


def plain_json(v: Any) -> Any:
    """A config value as JSON writes it (tuples are lists), for comparing a recorded config with a live one."""
    return json.loads(json.dumps(v, default=str))
