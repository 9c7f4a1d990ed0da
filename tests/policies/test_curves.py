"""Training curves: one value a step (a resumed run's later value wins), resumes marked, a PNG per lineage
written whole, and metrics.jsonl kept in the run and in the lineage folder."""

from __future__ import annotations

import json
from pathlib import Path

from policies import curves
from policies.metrics import Metrics


def test_series_and_resumes() -> None:
    rows = [{"step": 1, "loss": 1.0, "run": "a"}, {"step": 2, "loss": 0.8, "run": "a"}, {"step": 3, "loss": 0.7, "run": "a"},
            {"step": 3, "loss": 0.65, "run": "b"}, {"step": 4, "loss": 0.6, "lr": 1e-4, "run": "b"}]
    assert curves.series(rows, "loss") == ([1, 2, 3, 4], [1.0, 0.8, 0.65, 0.6])
    assert curves.series(rows, "lr") == ([4], [1e-4])
    assert curves.resumes(rows) == [3]


def test_metrics_keep_the_lineage_and_draw_it(tmp_path: Path) -> None:
    lineage = tmp_path / "checkpoints" / "20261129-000000-aaaa"
    for run, steps in (("run1", range(1, 6)), ("run2", range(5, 11))):
        run_dir = tmp_path / run
        run_dir.mkdir()
        m = Metrics(run_dir, "none", {}, lineage=lineage, title="DP3 test: lineage x")
        for step in steps:
            m.log(step, {"loss": 1.0 / step, "lr": 1e-4 * min(1.0, step / 3)})
        m.log(10, {"val_loss": 0.2})
        m.close()
    rows = curves.read_metrics(lineage / curves.LINEAGE_METRICS)
    assert [r["run"] for r in rows][:1] == ["run1"] and rows[-1]["run"] == "run2" and len(rows) == 13
    assert len(curves.read_metrics(tmp_path / "run2" / "metrics.jsonl")) == 7  # the run's own lines
    for png in (tmp_path / "run2" / curves.CURVES, lineage / curves.CURVES):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not list(lineage.glob(".*tmp*"))  # nothing half-written left
    (lineage / curves.LINEAGE_METRICS).open("a").write('{"step": 11, "loss"')  # a torn last line
    assert len(curves.read_metrics(lineage / curves.LINEAGE_METRICS)) == 13
    assert json.loads((tmp_path / "run1" / "metrics.jsonl").read_text().splitlines()[0])["run"] == "run1"
