"""Training curves as pictures: loss (log scale, with validation loss where logged) and learning rate against
the step, one PNG a training lineage that continues across resumes, and several runs overlaid for
`runner compare`. The data is metrics.jsonl ({"step": ..., "loss": ..., "lr": ..., "run": ...} a line)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: The lineage's metrics (every run that trained it, in order) and its picture, in the lineage folder.
LINEAGE_METRICS = "metrics.jsonl"
CURVES = "train_curves.png"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl; a torn last line (a killed writer) is skipped."""
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def series(rows: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`, one value a step: a step logged again after a resume from an earlier checkpoint
    takes the later value."""
    by_step: dict[int, float] = {}
    for row in rows:
        if isinstance(row.get(key), (int, float)):
            by_step[row["step"]] = float(row[key])
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def resumes(rows: list[dict[str, Any]]) -> list[int]:
    """Steps where another run took the lineage over (a resume)."""
    out, last = [], None
    for row in rows:
        run = row.get("run")
        if last is not None and run is not None and run != last:
            out.append(row["step"])
        last = run if run is not None else last
    return out


def plot_lineage(rows: list[dict[str, Any]], out: Path, title: str) -> Path | None:
    """loss and validation loss (log scale) above, learning rate below; dashed lines at resumes. None without data."""
    steps, loss = series(rows, "loss")
    if not steps:
        return None
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot(steps, loss, color="tab:blue", linewidth=1.2, label="training loss")
    v_steps, val = series(rows, "val_loss")
    if v_steps:
        top.plot(v_steps, val, "o-", color="tab:red", markersize=4, linewidth=1, label="validation loss")
    top.set_yscale("log")
    top.set_ylabel("loss (MSE, log scale)")
    top.grid(alpha=0.3, which="both")
    l_steps, lr = series(rows, "lr")
    bottom.plot(l_steps, lr, color="tab:green", linewidth=1.2)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("optimizer step")
    bottom.grid(alpha=0.3)
    for i, step in enumerate(resumes(rows)):
        for ax in (top, bottom):
            ax.axvline(step, color="gray", linestyle="--", linewidth=0.8, label="resumed" if i == 0 and ax is top else None)
    top.legend(fontsize=8)
    top.set_title(title, fontsize=10)
    return save_figure(fig, out)


def plot_compare(runs: list[tuple[str, list[dict[str, Any]]]], out: Path) -> Path | None:
    """Training loss of several runs overlaid (log scale), validation loss dotted in the same colour."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = False
    for label, rows in runs:
        steps, loss = series(rows, "loss")
        if not steps:
            continue
        (line,) = ax.plot(steps, loss, linewidth=1.2, label=label)
        v_steps, val = series(rows, "val_loss")
        if v_steps:
            ax.plot(v_steps, val, "o:", color=line.get_color(), markersize=4, label=f"{label} (validation)")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (MSE, log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("training loss", fontsize=10)
    return save_figure(fig, out)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (steps and CLI commands have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: Path) -> Path:
    """Written to a temp name and renamed: a reader never sees half a PNG."""
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
    return out
