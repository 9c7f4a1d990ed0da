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
    run = tmp_path.name  # each line names the run that wrote it (a lineage's metrics hold several runs)
    assert rows == [{"step": 1, "loss": 0.5, "run": run}, {"step": 10, "loss": 0.25, "lr": 1e-4, "run": run}]


def test_container_paths_are_shown_and_stored_as_host_paths(tmp_path: Path) -> None:
    from policies import context
    from policies.context import HostPaths, StepContext, host_paths_in, show_host_paths
    from policies.evaluation import EpisodeResult, summarize

    h = HostPaths({"/job": "/home/u/runs/x", "/data/converted": "/lab/conv", "/": "/ignored"})
    assert h("checkpoint /job/checkpoints/r1/step-40.ckpt") == "checkpoint /home/u/runs/x/checkpoints/r1/step-40.ckpt"
    assert h("/jobs/x and a/job/b stay; /data/converted/z moves") == "/jobs/x and a/job/b stay; /lab/conv/z moves"
    ctx = StepContext(job="x", policy="dp3", task=None, step="eval", run_id="r", run_dir=tmp_path, resume=False,
                      mode="run", paths={}, options={}, spec={}, host_paths={"/job": "/home/u/runs/x"})
    import sys

    out, err = sys.stdout, sys.stderr
    try:
        show_host_paths(ctx)
        assert host_paths_in({"plot": ["/job/r/eval/episode2.png"]}) == {"plot": ["/home/u/runs/x/r/eval/episode2.png"]}
        summary = summarize([EpisodeResult(2, [0.1] * 7, 0.0, 1.0, "/job/r/eval/episode2.png")], tmp_path)
        stored = json.loads((tmp_path / "eval.json").read_text())
        assert stored["episodes"][0]["plot"] == "/home/u/runs/x/r/eval/episode2.png" == summary["episodes"][0]["plot"]
    finally:
        sys.stdout, sys.stderr = out, err
        context._SHOWN = HostPaths(None)


def test_the_time_left_is_smoothed_over_slow_intervals() -> None:
    from policies.metrics import SmoothRate

    r = SmoothRate()
    etas = [progress(10 * (i + 1), 1000, r.update(rate), 16) for i, rate in enumerate([5, 100, 100, 3, 100, 100])]
    # the start-up interval gives no estimate and is then forgotten; a validation pause (3 samples/s) moves the
    # estimate by a fifth
    assert etas[0].endswith("ETA ?") and etas[1].endswith("ETA 2m37s"), etas
    assert etas[2].endswith("ETA 2m35s") and etas[3].endswith("ETA 3m11s") and etas[5].endswith("ETA 2m52s"), etas
    assert progress(40, 1000, 3, 16).endswith("ETA 1h25m")  # what the raw interval rate would have said
