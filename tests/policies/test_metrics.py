import json
from pathlib import Path

from policies.metrics import Metrics, progress


def test_progress_bar_fills_with_the_steps_and_estimates_the_time_left() -> None:
    assert progress(0, 100, 0.0, 16) == "[....................]   0% ETA ?"
    # 75 steps left of 16 samples at 8 samples/s: 150 s
    assert progress(25, 100, 8.0, 16) == "[#####...............]  25% ETA 2m30s"
    assert progress(100, 100, 8.0, 16) == "[####################] 100% ETA 0s"
    assert progress(1, 10_000, 16.0, 16).endswith("ETA 2h46m")
    assert progress(120, 100, 8.0, 16).startswith("[####################] 100%")  # past max_steps: clamped


def test_metrics_jsonl_has_one_object_a_log(tmp_path: Path) -> None:
    m = Metrics(tmp_path, "none", {})
    m.log(1, {"loss": 0.5})
    m.log(10, {"loss": 0.25, "lr": 1e-4})
    m.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 0.5}, {"step": 10, "loss": 0.25, "lr": 1e-4}]
