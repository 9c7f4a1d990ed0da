"""The CLI as a user meets it: exit codes, messages without tracebacks, job lookup by name."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.cli import main
from runner.errors import JobNotFoundError
from runner.jobs import resolve_job

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_validate_reports_every_problem_without_a_traceback(write_job: Callable[..., Path], tmp_path: Path) -> None:
    write_job("name: a\npolicy: dp3\nresources: {gpus: [0, x], shm: huge}\n", "a.yaml")
    r = cli("validate", "jobs/a.yaml", cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "2 problems in" in r.stderr and "resources.gpus" in r.stderr and "resources.shm" in r.stderr


def test_validate_warns_about_missing_paths_but_passes(write_job: Callable[..., Path], tmp_path: Path) -> None:
    write_job("name: a\npolicy: dp3\ndata: {raw: /nope/raw}\nenv: {HF_TOKEN: abc}\nsteps: {convert: }\n", "a.yaml")
    r = cli("validate", "a", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "data.raw: /nope/raw does not exist" in r.stderr
    assert "env.HF_TOKEN holds a literal secret" in r.stderr


def test_plan_prints_docker_run_for_every_pipeline_step(tmp_path: Path) -> None:
    r = cli("plan", str(REPO / "jobs" / "dp3_banana.yaml"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("docker run \\") == 3  # convert, train, eval; deploy only when named
    assert "--shm-size 8g" in r.stdout and "# why:" in r.stdout
    r = cli("plan", str(REPO / "jobs" / "dp3_banana.yaml"), "deploy", "--json", cwd=tmp_path)
    import json

    plan = json.loads(r.stdout)
    assert plan["schema_version"] == 1 and plan["steps"][0]["docker"]["network"] == "host"


def test_unknown_step_and_unknown_job(tmp_path: Path, write_job: Callable[..., Path]) -> None:
    write_job("name: a\npolicy: dp3\nsteps: {train: }\n", "a.yaml")
    r = cli("plan", "a", "deploy", cwd=tmp_path)
    assert r.returncode == 2 and "the job has no step 'deploy'; it lists: train" in r.stderr
    r = cli("train", "nosuchjob", cwd=tmp_path)
    assert r.returncode == 2 and "no job called 'nosuchjob'" in r.stderr


def test_resume_without_a_previous_run_says_what_to_do(tmp_path: Path, write_job: Callable[..., Path]) -> None:
    write_job("name: a\npolicy: dp3\nsteps: {train: }\n", "a.yaml")
    assert main(["validate", str(tmp_path / "jobs" / "a.yaml")]) == 0
    r = cli("resume", "a", cwd=tmp_path)
    assert r.returncode == 2 and "nothing to resume" in r.stderr and "runner train" in r.stderr


def test_job_lookup_by_file_name_declared_name_and_runs_copy(tmp_path: Path, write_job: Callable[..., Path]) -> None:
    write_job("name: banana\npolicy: dp3\n", "b-file.yaml")
    assert resolve_job("banana", tmp_path, {}).file.name == "b-file.yaml"
    assert resolve_job("b-file", tmp_path, {}).name == "banana"
    copy = tmp_path / "runs" / "gone"
    copy.mkdir(parents=True)
    (copy / "job.yaml").write_text("name: gone\npolicy: dp3\ndata: {raw: demos}\n")
    (copy / "job.source").write_text(str(tmp_path / "jobs" / "gone.yaml") + "\n")
    job = resolve_job("gone", tmp_path, {})
    assert job.spec.data.raw == tmp_path / "demos"  # relative paths still resolve against the repo
    with pytest.raises(JobNotFoundError, match="never run from here"):
        resolve_job("other", tmp_path, {})


def test_history_logs_and_ps_on_a_local_run(tmp_path: Path, write_job: Callable[..., Path]) -> None:
    write_job("name: h\npolicy: command\nexecutor: local\nsteps: {s: {command: 'echo logged-line'}}\n", "h.yaml")
    assert cli("run", "h", cwd=tmp_path).returncode == 0
    hist = cli("history", "h", cwd=tmp_path)
    assert "succeeded" in hist.stdout and "s:succeeded" in hist.stdout
    logs = cli("logs", "h", "-f", cwd=tmp_path)
    assert "logged-line" in logs.stdout and "succeeded" in logs.stderr
    assert "no runs in progress" in cli("ps", cwd=tmp_path).stdout
    assert "h " in cli("ps", "--all", cwd=tmp_path).stdout


def test_logs_step_finds_the_newest_run_that_has_it_and_typos_get_a_suggestion(
        tmp_path: Path, write_job: Callable[..., Path]) -> None:
    write_job("name: two\npolicy: command\nexecutor: local\nsteps: {a: {command: 'echo from-a'}, "
              "b: {command: 'echo from-b'}}\n", "two.yaml")
    assert cli("run", "two", cwd=tmp_path).returncode == 0
    assert cli("run", "two", "a", cwd=tmp_path).returncode == 0  # the newest run has no b
    r = cli("logs", "two", "--step", "b", cwd=tmp_path)
    assert r.returncode == 0 and "from-b" in r.stdout, r.stdout + r.stderr
    write_job("name: d\npolicy: dp3\nsteps: {train: }\n", "d.yaml")
    r = cli("plan", "d", "trian", cwd=tmp_path)
    assert r.returncode == 2 and "Did you mean 'train'?" in r.stderr


def test_jobs_lists_policy_task_and_the_last_run(tmp_path: Path, write_job: Callable[..., Path]) -> None:
    write_job("name: listed\npolicy: command\ntask: tidy\nexecutor: local\nsteps: {s: {command: 'true'}}\n", "l.yaml")
    (tmp_path / "jobs" / "broken.yaml").write_text("name: [\n")
    assert cli("run", "listed", cwd=tmp_path).returncode == 0
    out = cli("jobs", cwd=tmp_path).stdout.splitlines()
    assert out[0].split() == ["JOB", "POLICY", "TASK", "LAST", "RUN", "STATUS"]
    row = next(line for line in out if line.startswith("listed"))
    assert row.split()[1:3] == ["command", "tidy"] and row.split()[-1] == "succeeded"
    assert any(line.startswith("broken") and "invalid" in line for line in out)


def test_rm_and_gc_remove_old_runs_with_a_dry_run_first(tmp_path: Path, write_job: Callable[..., Path]) -> None:
    write_job("name: g\npolicy: command\nexecutor: local\nsteps: {s: {command: 'echo x'}}\n", "g.yaml")
    for _ in range(3):
        assert cli("run", "g", cwd=tmp_path).returncode == 0
    runs = sorted(p.name for p in (tmp_path / "runs/g").iterdir() if p.is_dir())
    (tmp_path / "runs/g/checkpoints" / runs[0]).mkdir(parents=True)  # the lineage the oldest run started
    dead_tmp = tmp_path / "runs/g" / runs[2] / ".run.json.4194000.tmp"
    dead_tmp.write_text("{")
    dry = cli("gc", "--keep", "1", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and dry.stdout.count("would remove") == 3, dry.stdout  # 2 runs + 1 lineage
    assert sorted(p.name for p in (tmp_path / "runs/g").iterdir() if p.is_dir() and p.name != "checkpoints") == runs
    r = cli("gc", "--keep", "1", cwd=tmp_path)
    assert r.returncode == 0 and "a temp file of a killed write" in r.stdout, r.stdout
    left = sorted(p.name for p in (tmp_path / "runs/g").iterdir() if p.is_dir() and p.name != "checkpoints")
    assert left == runs[2:] and not (tmp_path / "runs/g/checkpoints" / runs[0]).exists() and not dead_tmp.exists()
    assert cli("rm", runs[2], cwd=tmp_path).returncode == 0 and not (tmp_path / "runs/g" / runs[2]).exists()
    gone = cli("rm", "nope", cwd=tmp_path)
    assert gone.returncode != 0 and "no job or run id 'nope'" in gone.stderr


def test_gc_keeps_compile_caches_unless_asked_and_never_a_running_job_s(tmp_path: Path,
                                                                       write_job: Callable[..., Path]) -> None:
    import time

    write_job("name: g\npolicy: command\nexecutor: local\nsteps: {s: {command: 'echo x'}}\n", "g.yaml")
    write_job("name: busy\npolicy: command\nexecutor: local\nsteps: {s: {command: 'sleep 60'}}\n", "busy.yaml")
    assert cli("run", "g", cwd=tmp_path).returncode == 0
    caches = {job: tmp_path / "runs" / job / ".compile-cache" for job in ("g", "busy")}
    for c in caches.values():
        (c / "inductor").mkdir(parents=True)
        (c / "inductor" / "kernel.py").write_text("x" * 5000)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", "busy"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "busy" not in cli("ps", cwd=tmp_path).stdout and time.monotonic() < deadline:
            time.sleep(0.5)
        kept = cli("gc", cwd=tmp_path)
        assert "compile caches kept (4.88 KiB in 1 job(s)): --compile-cache removes them" in kept.stdout, kept.stdout
        assert f"kept {caches['busy']}" in kept.stdout and "a step of the job is running" in kept.stdout
        gone = cli("gc", "--compile-cache", cwd=tmp_path)
        assert f"removed {caches['g']}" in gone.stdout and not caches["g"].exists(), gone.stdout
        assert caches["busy"].is_dir()  # a running step may be compiling into it
    finally:
        cli("stop", "busy", cwd=tmp_path)
        proc.wait(timeout=60)


def test_bash_completion_completes_verbs_options_and_job_names(tmp_path: Path, write_job: Callable[..., Path]) -> None:
    write_job("name: sample_x\npolicy: dp3\nsteps: {train: }\n", "sample_x.yaml")
    script = cli("completion", cwd=tmp_path).stdout

    def complete(*words: str) -> list[str]:
        code = (f'{script}\nCOMP_WORDS=({" ".join(words)}); COMP_CWORD={len(words) - 1}; _runner; '
                'echo "${COMPREPLY[@]}"')
        return subprocess.run(["bash", "-c", code], cwd=tmp_path, capture_output=True, text=True).stdout.split()

    assert complete("runner", "tr") == ["train"]
    assert complete("runner", "train", "sample_") == ["sample_x"]
    assert complete("runner", "train", "x", "--ex") == ["--executor"]
    assert complete("runner", "gc", "--dry") == ["--dry-run"]


def test_plan_shows_what_rdt_launches_inside_the_step_and_its_options() -> None:
    import json

    fused = cli("plan", "jobs/sample_rdt.yaml", "train", "resources.gpus=2", "--executor", "local", cwd=REPO)
    assert fused.returncode == 0, fused.stderr
    assert "# inside the step, it launches (engine fused):" in fused.stdout and "--multi_gpu" in fused.stdout
    assert "DeepSpeed ZeRO-2 instead where a GPU has less than" in fused.stdout  # decided where the step runs
    two = cli("plan", "jobs/sample_rdt.yaml", "train", "resources.gpus=2", "steps.train.engine=accelerate",
              "--executor", "local", cwd=REPO)
    assert two.returncode == 0, two.stderr
    assert "# inside the step, it launches (engine accelerate):" in two.stdout
    assert "--num_processes 2" in two.stdout and "--use_deepspeed --zero_stage 2" in two.stdout
    assert '"train_micro_batch_size_per_gpu": 8' in two.stdout  # the rendered DeepSpeed config
    assert "#   * max_train_steps: 60" in fused.stdout and "#     engine: \"auto\"" in fused.stdout  # set / default
    assert "#   * engine: \"accelerate\"" in two.stdout
    # the tiny model's 36 MB checkpoints, 60 steps every 20 and checkpoints_total_limit 2: 3 at once (the newest
    # written before the oldest goes)
    assert "# checkpoints: ~36.0 MB each, up to 3 at once: 108.0 MB on the runs folder's disk" in fused.stdout
    one = cli("plan", "jobs/sample_rdt.yaml", "train", "resources.gpus=1", "--json", cwd=REPO)
    step = json.loads(one.stdout)["steps"][0]
    assert step["launches"]["engine"] == "fused" and "--use_deepspeed" not in step["launches"]["launch"]
    assert "deepspeed_config.json" not in step["launches"]
    assert step["options"]["train_batch_size"] == {"value": 8, "set_by_job": True}
    assert step["options"]["compile"] == {"value": True, "set_by_job": False}


def test_plan_resolved_prints_the_whole_job_with_overrides_and_no_secret(write_job: Callable[..., Path],
                                                                        tmp_path: Path) -> None:
    import yaml

    write_job("name: a\npolicy: dp3\nenv: {WANDB_API_KEY: s3cr3t}\nsteps: {train: {epochs: 5}}\n", "a.yaml")
    r = cli("plan", "a", "--resolved", "steps.train.epochs=9", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load(r.stdout)
    assert data["steps"]["train"]["epochs"] == 9 and data["steps"]["train"]["batch_size"] > 0  # a default, filled in
    assert data["env"]["WANDB_API_KEY"] == "<redacted>" and "s3cr3t" not in r.stdout
    assert Path(data["outputs"]["runs_dir"]).is_absolute()


def test_compare_puts_runs_side_by_side_and_overlays_their_losses(tmp_path: Path) -> None:
    import json

    from runner import records

    runs = tmp_path / "runs"
    for run_id, lr, overrides, mse in (("20261129-100000-aaaa", 1e-4, [], 0.01),
                                       ("20261129-110000-bbbb", 3e-4, ["steps.train.lr=0.0003"], None)):
        rec = records.RunRecord(run_id=run_id, job="j", policy="dp3", job_file="j.yaml", spec_as_written="",
                                spec_resolved={}, host="h", git={}, executor="local", status="succeeded",
                                started="2026-11-29T10:00:00", ended="2026-11-29T10:01:05", overrides=overrides)
        folder = records.save(rec, runs).parent
        (folder / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "loss": lr * 1e4 / s, "lr": lr, "run": run_id}) + "\n" for s in range(1, 21)))
        if mse is not None:
            (folder / "eval").mkdir()
            (folder / "eval" / "eval.json").write_text(json.dumps({"mse_joints": mse}))
    out = tmp_path / "cmp.png"
    r = cli("compare", "20261129-100000-aaaa", "j", "--runs-dir", str(runs), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    header, first, second = r.stdout.splitlines()[:3]
    assert header.split()[:4] == ["RUN", "JOB", "STATUS", "DURATION"]
    assert first.split()[0] == "20261129-100000-aaaa" and "1m05s" in first and "0.01" in first and "0.05" in first
    assert second.split()[0] == "20261129-110000-bbbb" and "steps.train.lr=0.0003" in second  # `j`: its newest run
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_every_verb_documents_its_arguments_and_shows_examples() -> None:
    import argparse

    from runner.cli import EXAMPLES, build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(verbs) == set(EXAMPLES)
    for name, sp in verbs.items():
        undocumented = [a.dest for a in sp._actions if not a.help and not isinstance(a, argparse._HelpAction)]
        assert undocumented == [], f"runner {name}: {undocumented} have no help"
        assert "examples:\n  runner " in sp.format_help() or "examples:\n  eval " in sp.format_help(), name
    for lines in EXAMPLES.values():  # the examples name verbs that exist
        for line in lines:
            words = line.split()
            if words[0] == "runner":
                assert words[1] in verbs, line


def test_shell_runs_the_command_after_double_dash_with_the_jobs_env(tmp_path: Path) -> None:
    """`runner shell JOB [options] -- CMD ...`: the command's own options are not the runner's; its exit code is
    the shell's; a shell that wrote nothing leaves no run folder."""
    code = "import os, sys; print('in', os.path.basename(os.getcwd()), os.environ.get('RUNNER_JOB')); sys.exit(3)"
    r = cli("shell", str(REPO / "jobs" / "sample_dp3.yaml"), "--executor", "local", "--", sys.executable, "-c", code,
            cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert r.stdout.startswith("in 2") and r.stdout.split()[2] == "sample_dp3", r.stdout
    assert not (tmp_path / "runs" / "sample_dp3").exists()
    echo = "import sys; print(sys.argv[1:])"
    r = cli("shell", str(REPO / "jobs" / "sample_dp3.yaml"), "--executor", "local", "--", sys.executable, "-c", echo,
            "--executor", "docker", "steps.train.epochs=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['--executor', 'docker', 'steps.train.epochs=1']"  # the command's, not the runner's
