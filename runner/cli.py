"""`runner` command line. One small function per verb; heavy modules are imported inside them so that
`runner plan` starts fast. Only this module prints, and only it catches RunnerError."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.orchestrate import RunRequest
    from runner.spec.load import LoadedJob



def _err(msg: str) -> None:
    sys.stderr.write(msg.rstrip() + "\n")


def _say() -> Callable[[str], None]:
    """Status lines on stderr: rich colours on a terminal; plain text (and no rich import) otherwise."""
    if not sys.stderr.isatty():
        import re

        markup = re.compile(r"\[/?(?:bold|red|yellow|green|dim)?\]")
        return lambda m: _err(markup.sub("", m))
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    return lambda m: console.print(m)


_OVERRIDES: list[str] = []  # `key=value` arguments of this invocation (runner/spec/overrides.py)


def _job(ref: str) -> LoadedJob:
    from runner.jobs import resolve_job

    return resolve_job(ref, Path.cwd(), os.environ, _OVERRIDES)


def _split_overrides(a: argparse.Namespace) -> None:
    """`key=value` positionals are overrides wherever they stand; the rest stay step names."""
    from runner.spec.overrides import is_override

    found = list(getattr(a, "overrides", None) or [])
    if isinstance(getattr(a, "steps", None), list):
        found += [x for x in a.steps if is_override(x)]
        a.steps = [x for x in a.steps if not is_override(x)]
    if isinstance(getattr(a, "step", None), str) and is_override(a.step):
        found.insert(0, a.step)
        a.step = None
    _OVERRIDES[:] = found


def _path_warnings(job: LoadedJob, step: str | None) -> None:
    from runner.preflight import check_paths, literal_secrets

    for issue in check_paths(job, step):
        _err(f"warning: {job.file}: {issue} (an error for `runner run`; fine for planning elsewhere)")
    for text in literal_secrets(job):
        _err(f"warning: {job.file}: {text}")


def cmd_jobs(a: argparse.Namespace) -> int:
    """The jobs in ./jobs with their policy, task and last run; a file that does not load says why, briefly."""
    from runner.errors import RecordError, SpecError
    from runner.records import list_runs, load
    from runner.runs import table
    from runner.spec.load import load_job

    rows = []
    for f in sorted((Path.cwd() / "jobs").glob("*.y*ml")):
        try:
            job = load_job(f, os.environ)
        except SpecError as e:
            rows.append({"JOB": f.stem, "POLICY": "-", "TASK": "-", "LAST RUN": "-",
                         "STATUS": f"invalid ({len(e.problems)} problem(s): runner validate {f.name})"})
            continue
        runs = list_runs(job.spec.outputs.runs_dir, job.name)
        last, status = "-", "never run"
        if runs:
            try:
                rec = load(runs[-1])
                last, status = rec.run_id, rec.status
            except RecordError:
                last, status = runs[-1].parent.name, "unreadable record"
        rows.append({"JOB": job.name, "POLICY": job.policy.name, "TASK": job.spec.task or "-", "LAST RUN": last,
                     "STATUS": status})
    if not rows:
        print(f"no job files in {Path.cwd() / 'jobs'}")
        return 0
    for line in table(rows, ["JOB", "POLICY", "TASK", "LAST RUN", "STATUS"]):
        print(line)
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    job = _job(a.job)
    _path_warnings(job, None)
    print(f"ok: {job.file} is a valid {job.policy.name} job '{job.name}' (steps: {', '.join(job.step_names())})")
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    from datetime import datetime

    from runner.images import plan_image
    from runner.machine import gather_machine
    from runner.orchestrate import check_steps, pipeline_steps
    from runner.plan import build_plan, render_plan_text
    from runner.records import new_run_id

    job = _job(a.job)
    if a.resolved:
        return _print_resolved(job)
    steps = [a.step] if a.step else (pipeline_steps(job) or job.step_names())
    check_steps(job, steps)
    _path_warnings(job, a.step)
    image = plan_image(job.spec.image, job.policy, os.environ)
    machine = gather_machine(os.environ)
    run_id = new_run_id(datetime.now(), "xxxx")
    plans = [build_plan(job, s, machine, run_id=run_id, image=image.tag, executor=a.executor) for s in steps]
    if (a.executor or job.spec.executor) == "slurm":
        from runner.slurm import render_sbatch

        print("\n\n".join(render_sbatch(job, p, machine.python) for p in plans), end="")
        return 0
    if a.json:
        from runner.plan_json import plan_to_json

        print(plan_to_json(plans, image.tag))
        return 0
    print(f"# image {image.tag} (templates/Dockerfile.{image.inputs.image}.j2; `runner build {a.job}`)")
    print(f"# run id {run_id} is an example: each run gets a new one\n")
    print("\n\n".join(render_plan_text(p) for p in plans))
    return 0


def _print_resolved(job: LoadedJob) -> int:
    """The job as it will run, as Hydra's --cfg job prints it: every default filled in, paths absolute, overrides
    applied, secrets redacted."""
    import yaml

    from runner.plan import redact_spec

    data = redact_spec(job.spec.model_dump(mode="json"), job.spec.secret_env)
    print(f"# {job.file}: resolved (defaults filled in, paths absolute, overrides applied)")
    print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), end="")
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    import time

    from runner.executors.docker import connect
    from runner.executors.docker_build import ensure_image
    from runner.images import plan_image

    job = _job_or_policy(a.job)
    plan = plan_image(job.spec.image, job.policy, os.environ)
    t0 = time.perf_counter()
    log = _build_log(job, plan.tag)
    result = ensure_image(connect(), plan, log, sys.stdout.buffer, rebuild=a.rebuild)
    state = f"built in {time.perf_counter() - t0:.1f}s (log: {log})" if result.built else "up to date, not rebuilt"
    print(f"{result.tag}: {state}")
    return 0


def _build_log(job: LoadedJob, tag: str) -> Path:
    """Where a build started outside a run logs: runs/_builds/<tag>.log."""
    return job.spec.outputs.runs_dir / "_builds" / f"{tag.replace('/', '_').replace(':', '_')}.log"


def _job_or_policy(ref: str) -> LoadedJob:
    """A job, or for a bare policy name a minimal job of that policy (for `build dp3`, `shell dp3`)."""
    from policies import policies
    from runner.spec.load import parse_job_text

    if ref in policies() and not (Path.cwd() / "jobs" / f"{ref}.yaml").exists():
        text = f"name: {ref}-shell\npolicy: {ref}\n"
        if not policies()[ref].fixed_steps:
            text += "steps:\n  shell:\n    command: bash\n"
        return parse_job_text(text, Path.cwd() / "jobs" / f"<{ref}>.yaml", os.environ)
    return _job(ref)


def _run(req: RunRequest) -> int:
    import signal

    from runner.orchestrate import Orchestrator, exit_code_of

    def on_term(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt  # `kill`/`runner stop` of the runner: stop the step cleanly like Ctrl-C

    signal.signal(signal.SIGTERM, on_term)
    record = Orchestrator(os.environ, _say()).run(req)
    code = exit_code_of(record)
    run_dir = req.job.spec.outputs.runs_dir / record.job / record.run_id
    _say()(f"run {record.job}/{record.run_id}: {record.status}" + (f" (exit {code})" if code else "")
           + f"; logs, metrics and results in {run_dir}")
    return code


def cmd_run(a: argparse.Namespace) -> int:
    from runner.orchestrate import RunRequest

    return _run(RunRequest(_job(a.job), list(a.steps), a.executor, rebuild=a.rebuild))


def _cmd_step(step: str) -> Callable[[argparse.Namespace], int]:
    def cmd(a: argparse.Namespace) -> int:
        from runner.orchestrate import RunRequest

        job = _job(a.job)
        if getattr(a, "dry_run", False):
            job = _with_dry_run(job)
        start_from = getattr(a, "start_from", None)
        return _run(RunRequest(job, [step], a.executor, resume=getattr(a, "resume", False) or bool(start_from),
                               resume_from=start_from, mode="check" if getattr(a, "check", False) else "run"))

    return cmd


def _with_dry_run(job: Any) -> Any:
    """The job with steps.deploy.dry_run set, for this run only (the file is not changed)."""
    from dataclasses import replace as dc_replace

    steps = job.spec.steps
    if getattr(steps, "deploy", None) is None:
        return job
    deploy = steps.deploy.model_copy(update={"dry_run": True})
    spec = job.spec.model_copy(update={"steps": steps.model_copy(update={"deploy": deploy})})
    return dc_replace(job, spec=spec)


def cmd_resume(a: argparse.Namespace) -> int:
    from runner.orchestrate import RunRequest
    from runner.records import list_runs

    job = _job(a.job)
    if not list_runs(job.spec.outputs.runs_dir, job.name):
        _err(f"nothing to resume: {job.name} has never run under {job.spec.outputs.runs_dir}; "
             f"start it with `runner train {a.job}`")
        return 2
    return _run(RunRequest(job, ["train"], a.executor, resume=True, resume_from=a.start_from))


def cmd_shell(a: argparse.Namespace) -> int:
    from dataclasses import replace
    from datetime import datetime

    from runner.dockerargs import render_cli
    from runner.images import plan_image
    from runner.machine import gather_machine
    from runner.plan import build_plan
    from runner.records import new_run_id

    job = _job_or_policy(a.job)
    image = plan_image(job.spec.image, job.policy, os.environ)
    plan = build_plan(job, "shell", gather_machine(os.environ), run_id=new_run_id(datetime.now()),
                      image=image.tag, executor=a.executor)
    import subprocess

    plan.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        if plan.executor == "local":
            argv = list(a.command) if a.command else [os.environ.get("SHELL", "bash")]
            return subprocess.call(argv, env={**os.environ, **dict(plan.local.env)}, cwd=plan.local.cwd)
        from runner.executors.docker import connect
        from runner.executors.docker_build import ensure_image

        log = _build_log(job, image.tag)
        ensure_image(connect(), image, log, sys.stderr.buffer)  # the shell's image exists before docker is asked for it
        # A terminal gets a TTY; piped input (`echo CMD | runner shell dp3`, scripts) runs without one, where docker
        # would refuse with "the input device is not a TTY"
        args = replace(plan.docker, command=tuple(a.command) or ("bash",), interactive=True, tty=sys.stdin.isatty())
        # An interactive TTY is the docker CLI's job; argv is rendered from the same DockerRunArgs the SDK gets.
        return subprocess.call(render_cli(args))
    finally:
        for folder in (plan.run_dir, plan.run_dir.parent):  # a shell that wrote nothing leaves no folders behind
            with contextlib.suppress(OSError):
                folder.rmdir()


def cmd_submit(a: argparse.Namespace) -> int:
    from runner.orchestrate import RunRequest

    return _run(RunRequest(_job(a.job), [a.step] if a.step else [], a.to))


def _runs_dir(a: argparse.Namespace) -> Path:
    return Path(a.runs_dir) if a.runs_dir else Path.cwd() / "runs"


def _control() -> Any:
    from runner.runs import StepControl

    return StepControl()


def cmd_ps(a: argparse.Namespace) -> int:
    from datetime import datetime

    from runner.runs import ps_rows, table

    rows = ps_rows(_runs_dir(a), a.all, _control(), _err, datetime.now())
    if not rows:
        print("no runs in progress" + ("" if a.all else " (--all shows finished ones)"))
        return 0
    for line in table(rows, ["JOB", "RUN", "STATUS", "STEP", "EXECUTOR", "DURATION", "METRIC", "DETAIL"]):
        print(line)
    return 0


def cmd_history(a: argparse.Namespace) -> int:
    from datetime import datetime

    from runner.runs import history_rows, table

    rows = history_rows(_runs_dir(a), a.job, _control(), _err, datetime.now())
    if not rows:
        print(f"no runs of {a.job}")
        return 0
    for line in table(rows, ["RUN", "STATUS", "STARTED", "DURATION", "COMMIT", "METRIC", "STEPS"]):
        print(line)
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    """Summarise the job's converted episodes and draw a preview PNG of them."""
    try:
        from policies.data.summary import preview, summarize
    except ImportError as e:
        _err(f"`runner data` reads HDF5: install the runner's [data] extra ({e})")
        return 1
    job = _job(a.job)
    folder = job.spec.data.converted
    if folder is None:
        _err(f"{job.file}: data.converted is not set: nothing to summarise")
        return 2
    task = job.spec.task or job.name
    root = folder / task if (folder / task).is_dir() else folder
    summary = summarize(root)
    for line in summary.lines():
        print(line)
    if not summary.episodes:
        return 1
    png = Path(a.out) if a.out else job.spec.outputs.runs_dir / job.name / "data_preview.png"
    print(f"preview: {preview(summary, png)}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    """Runs side by side (a job name stands for its newest run) and their training losses overlaid in a PNG."""
    from datetime import datetime

    from policies.curves import plot_compare, read_metrics
    from runner.runs import compare_row, find_runs, reconcile, table

    paths = [find_runs(_runs_dir(a), ref)[-1] for ref in a.refs]
    alive = _control().alive
    recs = [reconcile(p, alive) for p in paths]
    rows = [compare_row(r, p, datetime.now()) for r, p in zip(recs, paths, strict=True)]
    for line in table(rows, ["RUN", "JOB", "STATUS", "DURATION", "STEPS", "LAST LOSS", "BEST VAL", "EVAL MSE",
                             "OVERRIDES"]):
        print(line)
    out = Path(a.out) if a.out else _runs_dir(a) / f"compare-{'-'.join(r.run_id for r in recs)}.png"
    try:
        drawn = plot_compare([(f"{r.job} {r.run_id}", read_metrics(p.parent / "metrics.jsonl"))
                              for r, p in zip(recs, paths, strict=True)], out)
    except ImportError:
        _err("the curves need matplotlib: pip install matplotlib (or the runner's [policy] extra)")
        return 1
    print(f"training loss of each run: {drawn}" if drawn else "no training losses logged in these runs: no picture")
    return 0


def cmd_logs(a: argparse.Namespace) -> int:
    from runner.records import load, step_log
    from runner.runs import follow, log_record, reconcile

    alive = _control().alive
    path = log_record(_runs_dir(a), a.ref, a.step)
    rec = reconcile(path, alive)
    steps = [s for s in rec.steps if step_log(path, s) and (a.step is None or s.name == a.step)]
    if not steps:
        _err(f"run {rec.job}/{rec.run_id} has no step logs yet" + (f" for {a.step}" if a.step else ""))
        return 1
    out = sys.stdout.buffer
    for s in steps:
        name = s.name

        def running(name: str = name, said: set[str] = set()) -> bool:  # noqa: B006 - one set per step, on purpose
            if not a.follow:
                return False
            st = next(x for x in reconcile(path, alive).steps if x.name == name)
            if st.detail and st.detail not in said:  # e.g. a Slurm job still PENDING (Resources)
                said.add(st.detail)
                _err(f"-- {st.detail}")
            return st.status in ("running", "pending")

        for chunk in follow(step_log(path, s) or path.parent / f"{name}.log", running):
            out.write(chunk)
            out.flush()
    final = load(path)
    _err(f"-- {final.job}/{final.run_id}: {final.status}")
    return 0


def cmd_stop(a: argparse.Namespace) -> int:
    from runner.runs import stop_runs

    stopped = stop_runs(_runs_dir(a), a.ref, a.grace, _control(), _err)
    for what in stopped:
        print(f"stopped {what}")
    if not stopped:
        print(f"nothing running for {a.ref}")
    return 0


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _remove(paths: list[Path], dry_run: bool) -> int:
    """Remove (or, dry, list) folders and files; prints each with its size. Returns the bytes freed."""
    import shutil

    from runner.spec.types import approx_size

    total = 0
    for p in paths:
        size = _size(p) if p.is_dir() else (p.stat().st_size if p.exists() else 0)
        total += size
        print(f"{'would remove' if dry_run else 'removed'} {p} ({approx_size(size)})")
        if not dry_run:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return total


def cmd_rm(a: argparse.Namespace) -> int:
    """Remove one run's folder (refused while it runs); --checkpoints also removes the lineage it started."""
    from runner.errors import BadRunRefError, RunActiveError
    from runner.runs import rm_targets

    try:
        targets, kept = rm_targets(_runs_dir(a), a.run, a.checkpoints, _control(), _err)
    except (BadRunRefError, RunActiveError) as e:
        _err(f"error: {e.reason}")
        return 2
    if kept is not None:
        print(f"kept its checkpoints in {kept} (add --checkpoints to remove them)")
    _remove(targets, a.dry_run)
    return 0


def cmd_gc(a: argparse.Namespace) -> int:
    """Keep each job's newest --keep runs; remove older finished runs, their lineages, set-aside checkpoint
    folders and temp files of killed writers (with --compile-cache, the jobs' compile caches too). --dry-run lists
    what would go."""
    from runner.atomic import remove_stale_temps
    from runner.runs import compile_caches, gc_targets
    from runner.spec.types import approx_size

    runs_dir = _runs_dir(a)
    control = _control()
    targets = gc_targets(runs_dir, a.job, a.keep, control, _err)
    caches, busy = compile_caches(runs_dir, a.job, control, _err)
    for c in busy:
        print(f"kept {c} ({approx_size(_size(c))}): a step of the job is running")
    if a.compile_cache:
        targets += caches
    elif caches:
        print(f"compile caches kept ({approx_size(sum(_size(c) for c in caches))} in {len(caches)} job(s)): "
              "--compile-cache removes them; the next run of each job compiles anew")
    freed = _remove(targets, a.dry_run)
    temps = [] if a.dry_run else remove_stale_temps(runs_dir, recursive=True) if runs_dir.is_dir() else []
    for t in temps:
        print(f"removed {t} (a temp file of a killed write)")
    print(f"{'would free' if a.dry_run else 'freed'} {approx_size(freed)}"
          + (f", {len(temps)} temp file(s)" if temps else ""))
    return 0


def completion_script(parser: argparse.ArgumentParser) -> str:
    """A bash completion function for `runner`: verbs, each verb's options, and job names from ./jobs. Pure."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    verbs = sorted(sub.choices)
    cases = []
    for verb in verbs:
        opts = sorted(o for a in sub.choices[verb]._actions for o in a.option_strings if o.startswith("--"))
        cases.append(f"    {verb}) opts={shlex_quote(' '.join(opts))} ;;")
    return "\n".join([
        "# bash completion for runner: `eval \"$(runner completion)\"` (or save it under bash-completion's folder)",
        "_runner() {",
        "  local cur=${COMP_WORDS[COMP_CWORD]} verb=${COMP_WORDS[1]} opts",
        "  if [ \"$COMP_CWORD\" -eq 1 ]; then",
        "    COMPREPLY=($(compgen -W " + shlex_quote(" ".join(verbs)) + " -- \"$cur\")); return",
        "  fi",
        "  case $verb in", *cases, "    *) opts= ;;", "  esac",
        "  local jobs=$(ls jobs/*.y*ml 2>/dev/null | sed -e 's#^jobs/##' -e 's#\\.ya\\?ml$##')",
        "  COMPREPLY=($(compgen -W \"$opts $jobs\" -- \"$cur\"))",
        "}",
        "complete -o default -F _runner runner", ""])


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def cmd_completion(a: argparse.Namespace) -> int:
    print(completion_script(build_parser()), end="")
    return 0


JOB_HELP = "a job file (jobs/x.yaml) or a job name (its file is jobs/<name>.yaml)"

#: `runner VERB --help` ends with these, run as written from the repository with its shipped jobs.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "jobs": ("runner jobs",),
    "completion": ('eval "$(runner completion)"            # in ~/.bashrc',),
    "validate": ("runner validate jobs/dp3_banana.yaml", "runner validate dp3_banana steps.train.epochs=10"),
    "plan": ("runner plan dp3_banana train            # the docker run, why each option, the step's options",
             "runner plan rdt_demo_clean train        # and the accelerate line and DeepSpeed config inside",
             "runner plan sample_dp3 --json", "runner plan dp3_banana --resolved",
             "runner plan rdt_demo_clean train --to slurm   # the sbatch script"),
    "build": ("runner build sample_dp3", "runner build rdt --rebuild"),
    "run": ("runner run jobs/sample_dp3.yaml", "runner run sample_dp3 convert train --executor local",
            "runner run sample_rdt --detach && runner logs -f sample_rdt"),
    "convert": ("runner convert sample_dp3", "runner convert --check dp3_banana"),
    "train": ("runner train sample_dp3 steps.train.epochs=10", "runner train sample_dp3 --from 20261129-101500-ab12",
              "make train JOB=jobs/dp3_banana.yaml ARGS='steps.train.epochs=10'"),
    "eval": ("runner eval sample_dp3", "runner eval sample_rdt steps.eval.weights=model"),
    "deploy": ("runner deploy sample_dp3                 # the simulated Franka", "runner deploy dp3_banana --dry-run"),
    "submit": ("runner submit rdt_demo_clean train --to slurm", "runner submit sample_dp3 train slurm.partition=gpu"),
    "resume": ("runner resume rdt_demo_clean", "runner resume sample_dp3 --from 20261129-101500-ab12"),
    "shell": ("runner shell dp3", "runner shell dp3_banana                 # with the job's mounts and env",
              "runner shell rdt -- python -c 'import deepspeed'  # one command, then exit"),
    "rm": ("runner rm 20261129-101500-ab12 --dry-run", "runner rm 20261129-101500-ab12 --checkpoints"),
    "data": ("runner data sample_dp3", "runner data dp3_banana --out /tmp/banana.png"),
    "compare": ("runner compare sample_dp3 20261129-101500-ab12", "runner compare RUN1 RUN2 RUN3 --out cmp.png"),
    "gc": ("runner gc --dry-run", "runner gc sample_dp3 --keep 2"),
    "ps": ("runner ps", "runner ps --all"),
    "history": ("runner history sample_dp3",),
    "logs": ("runner logs -f sample_dp3", "runner logs sample_dp3 --step eval", "runner logs 20261129-101500-ab12"),
    "stop": ("runner stop sample_dp3", "runner stop 20261129-101500-ab12 --grace 600"),
}


def build_parser() -> argparse.ArgumentParser:
    from runner.executors import names as executor_names

    p = argparse.ArgumentParser(prog="runner", description="Run robot-learning jobs (DP3, RDT) in containers.")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        examples = "\n".join(f"  {line}" for line in EXAMPLES.get(name, ()))
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=f"examples:\n{examples}" if examples else None)
        sp.set_defaults(fn=fn)
        return sp

    def executor(sp: argparse.ArgumentParser, detach: bool = True) -> None:
        sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="set a job value for this run, checked like the file: steps.train.epochs=10")
        sp.add_argument("--executor", choices=executor_names(), help="override the job's executor")
        if detach:
            sp.add_argument("--detach", "-d", action="store_true",
                            help="run in the background, free of this terminal; follow with `runner logs -f JOB`")

    add("jobs", cmd_jobs, "the jobs in ./jobs: policy, task, last run and its status")
    add("completion", cmd_completion, "print bash completion for runner: eval \"$(runner completion)\"")
    sp = add("validate", cmd_validate, "check a job file; nothing runs")
    sp.add_argument("job", help=JOB_HELP)
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="check the job with these values set")
    sp = add("plan", cmd_plan, "print the exact docker run command of each step, and why")
    sp.add_argument("job", help=JOB_HELP)
    sp.add_argument("step", nargs="?", help="one step (default: every step the job lists)")
    sp.add_argument("--json", action="store_true", help="versioned JSON instead of text")
    sp.add_argument("--to", dest="executor", choices=["slurm"], help="print the sbatch script instead")
    sp.add_argument("--resolved", action="store_true",
                    help="print the whole job as it will run (defaults, absolute paths, overrides) and stop")
    executor(sp, detach=False)
    sp = add("build", cmd_build, "build the job's (or a policy's) image; a no-op when up to date")
    sp.add_argument("job", help="job file, job name, or policy name")
    sp.add_argument("--rebuild", action="store_true", help="build again even when the content tag is unchanged")
    sp = add("run", cmd_run, "run the job's steps (convert, train, eval as listed), or the steps named")
    sp.add_argument("job", help=JOB_HELP)
    sp.add_argument("steps", nargs="*", help="steps to run, in order (default: convert, train, eval as the job lists them)")
    sp.add_argument("--rebuild", action="store_true", help="rebuild the image even when its content tag is unchanged")
    executor(sp)
    _add_step_verbs(add, executor)
    _add_run_verbs(add)
    return p


AddVerb = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def _add_step_verbs(add: AddVerb, executor: Callable[..., None]) -> None:
    """convert/train/eval/deploy, submit, resume and shell."""
    for step in ("convert", "train", "eval", "deploy"):
        sp = add(step, _cmd_step(step), f"run the {step} step")
        sp.add_argument("job", help=JOB_HELP)
        executor(sp)
        if step == "train":
            sp.add_argument("--resume", action="store_true", help="continue the newest lineage's newest checkpoint")
            sp.add_argument("--from", dest="start_from", metavar="RUN|CHECKPOINT",
                            help="continue lineage RUN, or start a new lineage from CHECKPOINT")
        if step == "convert":
            sp.add_argument("--check", action="store_true", help="only check the recorded demos; write nothing")
        if step == "deploy":
            sp.add_argument("--dry-run", action="store_true", help="compute actions from the live robot; send nothing")
    sp = add("submit", cmd_submit, "hand the job's steps (or STEP) to a batch scheduler and follow them")
    sp.add_argument("job", help=JOB_HELP)
    sp.add_argument("step", nargs="?", help="one step (default: every step the job lists)")
    sp.add_argument("--to", choices=["slurm"], default="slurm", help="the batch scheduler (slurm)")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="set a job value for this run")
    sp = add("resume", cmd_resume, "continue training: the newest lineage, or the one --from names")
    sp.add_argument("job", help=JOB_HELP)
    sp.add_argument("--from", dest="start_from", metavar="RUN|CHECKPOINT",
                    help="continue lineage RUN (a run id under checkpoints/), or branch a new lineage from CHECKPOINT")
    executor(sp)
    sp = add("shell", cmd_shell, "interactive shell in the policy image with the job's mounts and env")
    sp.add_argument("job", help="job file, job name, or policy name (dp3, rdt, command)")
    sp.usage = "runner shell [-h] [--executor EXECUTOR] job [-- COMMAND ...]"
    sp.set_defaults(command=[])  # what follows `--`: run instead of the shell (main splits it off)
    executor(sp, detach=False)


def _add_run_verbs(add: AddVerb) -> None:
    """What acts on recorded runs: rm, gc, ps, history, logs, stop."""
    sp = add("rm", cmd_rm, "remove a run's folder (not while it runs); --checkpoints also its lineage")
    sp.add_argument("run", help="a run id (runner history JOB)")
    sp.add_argument("--checkpoints", action="store_true", help="also remove the checkpoints lineage this run started")
    sp.add_argument("--dry-run", action="store_true", help="list what would be removed")
    sp.add_argument("--runs-dir", help="default: ./runs")
    sp = add("data", cmd_data, "summarise the job's converted episodes and draw a preview PNG (cloud, joints, camera)")
    sp.add_argument("job", help=JOB_HELP)
    sp.add_argument("--out", help="the PNG to write (default: runs/<job>/data_preview.png)")
    sp = add("compare", cmd_compare, "runs side by side (steps, losses, eval MSE, overrides) and their loss curves in a PNG")
    sp.add_argument("refs", nargs="+", metavar="RUN|JOB", help="run ids, or job names (their newest run)")
    sp.add_argument("--out", help="the PNG to write (default: runs/compare-<run ids>.png)")
    sp.add_argument("--runs-dir", help="default: ./runs")
    sp = add("gc", cmd_gc, "remove old runs (keeping the newest --keep of each job), set-aside checkpoints, temp files")
    sp.add_argument("job", nargs="?", help="only this job")
    sp.add_argument("--keep", type=int, default=5, help="runs to keep a job (default 5)")
    sp.add_argument("--dry-run", action="store_true", help="list what would be removed")
    sp.add_argument("--compile-cache", action="store_true",
                    help="also remove the jobs' torch.compile caches (runs/<job>/.compile-cache), except a running job's")
    sp.add_argument("--runs-dir", help="default: ./runs")
    for name, fn, help_ in (("ps", cmd_ps, "runs in progress"), ("history", cmd_history, "runs of a job"),
                            ("logs", cmd_logs, "print (or follow) a run's logs"), ("stop", cmd_stop, "stop a run")):
        sp = add(name, fn, help_)
        sp.add_argument("--runs-dir", help="default: ./runs")
        if name == "ps":
            sp.add_argument("--all", action="store_true", help="also finished runs")
        elif name == "history":
            sp.add_argument("job", help=JOB_HELP)
        else:
            sp.add_argument("ref", help="job name or run id")
        if name == "logs":
            sp.add_argument("-f", "--follow", action="store_true", help="keep printing as the log grows")
            sp.add_argument("--step", help="this step's log, of the newest run that has it")
        if name == "stop":
            sp.add_argument("--grace", type=float,
                            help="seconds between SIGTERM and SIGKILL (default: the step's stop_grace_s, 30)")


def _detach(a: argparse.Namespace, argv: list[str]) -> int:
    """The same command in its own session, its output in runs/<job>/detached-<time>.out: a closed terminal or a
    dropped SSH connection no longer ends the pipeline half-way."""
    import subprocess
    import time

    job = _job(a.job)
    out = job.spec.outputs.runs_dir / job.name / f"detached-{time.strftime('%Y%m%d-%H%M%S')}.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    rest = [x for x in argv if x not in ("--detach", "-d")]
    with open(out, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "runner.cli", *rest], stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=Path.cwd())
    print(f"{job.name}: running in the background (pid {proc.pid}); its output: {out}\n"
          f"  follow: runner logs -f {job.name}    status: runner ps    stop: runner stop {job.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from runner.errors import RunnerError
    from runner.spec.overrides import is_override

    raw = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if raw[:1] == ["shell"] and "--" in raw:  # `runner shell JOB [options] -- CMD ...`: CMD is not the runner's
        cut = raw.index("--")
        command, raw = raw[cut + 1:], raw[:cut]
    parser = build_parser()
    # Overrides may follow options (`train JOB --executor local steps.train.epochs=3`): argparse leaves those over.
    args, rest = parser.parse_known_args(raw)
    unknown = [x for x in rest if not is_override(x)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if rest and not hasattr(args, "overrides"):
        parser.error(f"{args.verb} takes no KEY=VALUE overrides: {' '.join(rest)}")
    args.overrides = [*(getattr(args, "overrides", None) or []), *rest]
    if command:
        args.command = command
    try:
        _split_overrides(args)
        if getattr(args, "detach", False):
            return _detach(args, raw)
        code: int = args.fn(args)
    except RunnerError as e:
        _err(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
