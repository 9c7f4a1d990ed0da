"""PURE: build_plan(job, step, machine, ...) -> StepPlan. Everything a step needs to start, with the why of each option."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import layout
from runner.dockerargs import BindMount, DockerRunArgs, EnvVar, GpuRequest, Ulimit
from runner.netif import Interface, choose_nccl_ifname
from runner.plugins import resolve
from runner.spec.load import LoadedJob
from runner.spec.models import StepSpec
from runner.spec.types import format_size
from runner.step_context import StepContext

GIB = 1024**3
#: /dev/shm for training when the loader needs less: docker's 64 MB default is what killed DP3's workers.
TRAIN_SHM = 8 * GIB
OTHER_SHM = 2 * GIB


@dataclass(frozen=True)
class Machine:
    """Facts about where the runner runs, gathered once by runner.machine (the only impure part)."""

    uid: int
    gid: int
    hostname: str
    interfaces: tuple[Interface, ...]
    code_dir: Path
    python: str
    environ: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalArgs:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # overlaid on the runner's environment
    cwd: str
    secrets: frozenset[str] = frozenset()  # names in env whose values are never printed or recorded


@dataclass(frozen=True)
class StepPlan:
    job: str
    step: str
    run_id: str
    executor: str
    docker: DockerRunArgs
    local: LocalArgs
    why: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]
    contexts: Mapping[str, StepContext]  # "docker" / "local" -> what the step reads (paths as it sees them)
    log_file: Path  # on the host
    run_dir: Path  # on the host
    sbatch: str | None = None  # executor slurm: the batch script (runner/slurm.py)
    stop_grace_s: float = layout.STOP_GRACE_S  # SIGTERM -> SIGKILL for this step (steps.<step>.stop_grace_s)
    context_key: str | None = None  # which of `contexts` the step reads; default the executor's own
    options: tuple[tuple[str, Any, bool], ...] = ()  # the step's resolved options: (name, value, set by the job)
    preview: Mapping[str, Any] | None = None  # what the step launches inside itself (PolicyInfo.preview)


def job_dir(job: LoadedJob) -> Path:
    return job.spec.outputs.runs_dir / job.name


def container_name(job: str, step: str, run_id: str) -> str:
    return f"rr-{job}-{step}-{run_id}"


def build_plan(job: LoadedJob, step: str, machine: Machine, *, run_id: str, image: str,
               resume: bool = False, executor: str | None = None, mode: str = "run",
               resume_from: str | None = None) -> StepPlan:
    """Everything needed to run `step` of `job` as run `run_id`, for both executors."""
    opts: StepSpec | None = job.step(step)
    if opts is None and step == "shell":
        opts = StepSpec()  # `runner shell`: the job's mounts and env, no step options
    if opts is None:
        msg = f"{job.name} has no step {step!r}"
        raise KeyError(msg)
    spec = job.spec
    why: list[tuple[str, str]] = []
    warnings: list[str] = []
    host_job = job_dir(job)
    host_run = host_job / run_id
    c_run = layout.JOB / run_id

    mounts, c_paths, h_paths = _mounts(job, step, machine, why, check=mode == "check")
    shm = _shm(job, step, opts, why, warnings)
    gpus = _gpus(spec.resources.gpus)
    network, nccl_ifname = _network(job, step, opts, machine, why, warnings)

    base_env = _env(job, step, opts, run_id, nccl_ifname, gpus is not None)
    secret_names = {e.name for e in base_env if e.secret}
    pass_env = tuple(sorted(n for n in machine.environ
                            if n.startswith(layout.PASSTHROUGH_PREFIXES) and n not in {e.name for e in base_env}))
    if pass_env:
        why.append(("--env " + " ".join(pass_env), "passed through from your environment by name; values not shown"))
    if secret_names:
        why.append(("--env " + " ".join(sorted(secret_names)), "secrets: given to the container, never printed or recorded"))

    log_name = f"{step}.log"
    start = {"resume": resume, "resume_from": resume_from}
    c_context = _context(job, step, opts, run_id, start, mode, c_paths, str(c_run), host_path_map(mounts))
    h_context = _context(job, step, opts, run_id, start, mode, h_paths, str(host_run))
    docker = _docker_args(job, step, opts, machine, run_id, image, (base_env, pass_env, mounts, c_paths),
                          (gpus, shm, network), why)
    local = _local_args(job, step, opts, machine, run_id, base_env, h_paths, frozenset(secret_names))
    return StepPlan(job=job.name, step=step, run_id=run_id, executor=executor or spec.executor,
                    options=resolved_options(opts), preview=_preview(job, step, opts),
                    docker=docker, local=local, why=tuple(why), warnings=tuple(warnings),
                    contexts={"docker": c_context, "local": h_context}, stop_grace_s=opts.stop_grace_s,
                    log_file=host_run / log_name, run_dir=host_run)


def resolved_options(opts: StepSpec) -> tuple[tuple[str, Any, bool], ...]:
    """Every option of the step as it will run: (name, value, whether the job set it rather than the default)."""
    values = opts.model_dump(mode="json")
    return tuple((name, values[name], name in opts.model_fields_set) for name in type(opts).model_fields)


def _preview(job: LoadedJob, step: str, opts: StepSpec) -> Mapping[str, Any] | None:
    if job.policy.preview is None or opts.command is not None:
        return None
    show = resolve(job.policy.preview)
    out: Mapping[str, Any] | None = show(step, opts, job.spec.resources.gpus, job.spec.resources.nodes)
    return out


def _network(job: LoadedJob, step: str, opts: StepSpec, machine: Machine, why: list[tuple[str, str]],
             warnings: list[str]) -> tuple[str, str]:
    """(docker network, NCCL_SOCKET_IFNAME): the host network for several nodes' training or when the step asks."""
    spec = job.spec
    multi_node = spec.resources.nodes > 1
    network = opts.network or ("host" if multi_node and step == "train" else "bridge")
    if network == "host":
        why.append(("--network host", f"step {step} asks for the host network (robot/camera links)" if opts.network
                    else "several nodes: ranks on other machines must reach this one's NCCL sockets"))
    if opts.privileged:
        warnings.append(f"step {step} runs --privileged: it can reach every device of the host")
    nccl = choose_nccl_ifname(list(machine.interfaces), explicit=spec.resources.nccl_socket_ifname,
                              multi_node=multi_node, network=network)
    if nccl.problem:
        warnings.append(nccl.problem)
    why.append((f"NCCL_SOCKET_IFNAME={nccl.ifname}", nccl.why))
    return network, nccl.ifname


def _docker_args(job: LoadedJob, step: str, opts: StepSpec, machine: Machine, run_id: str, image: str,
                 env_mounts: tuple[list[EnvVar], tuple[str, ...], list[BindMount], dict[str, str]],
                 devices: tuple[GpuRequest | None, int | None, str], why: list[tuple[str, str]]) -> DockerRunArgs:
    """The step's `docker run`: the one DockerRunArgs value that feeds the printed command and the SDK call."""
    base_env, pass_env, mounts, c_paths = env_mounts
    gpus, shm, network = devices
    spec, c_run, host_run, log_name = job.spec, layout.JOB / run_id, job_dir(job) / run_id, f"{step}.log"
    labels = (("runner.managed", "1"), ("runner.job", job.name), ("runner.step", step), ("runner.run_id", run_id))
    docker = DockerRunArgs(
        image=image,
        command=("python3", "-m", "runner.inside", "--log", f"{c_run}/{log_name}", "--",
                 *_inner_command(job, step, opts, "python3")),
        name=container_name(job.name, step, run_id),
        user=f"{machine.uid}:{machine.gid}",
        workdir=str(c_run),
        labels=labels,
        env=(*_container_env(base_env, c_run, c_paths, opts), EnvVar("RUNNER_CONTEXT", f"{c_run}/{step}.context.json")),
        pass_env=pass_env,
        mounts=tuple(mounts),
        gpus=gpus,
        shm_size=shm,
        ipc_mode="private",
        network=network,
        ulimits=_ulimits(gpus is not None),
        devices=tuple(opts.devices),
        privileged=opts.privileged,
        cpus=spec.resources.cpus,
        memory=spec.resources.memory,
        init=True,
    )
    why += [
        ("--user", f"{machine.uid}:{machine.gid}: files written to mounts belong to you, not root"),
        ("--ipc private", "--shm-size applies to a private IPC namespace; the host's is not shared"),
        ("--ulimit", "stack=64m always; memlock=-1 with GPUs: pinned host memory for CUDA/NCCL (NVIDIA's settings)"),
        ("--workdir", f"the run folder {host_run}: relative outputs land there"),
        ("python3 -m runner.inside", f"tees output to {host_run / log_name} from inside, so a lost terminal loses nothing"),
    ]
    why.append(("--init", "a real PID 1 reaps orphaned DataLoader/launcher processes and forwards docker stop's SIGTERM"))
    why.append(("RUNNER_STOP_GRACE_S TORCH_ELASTIC_SHUTDOWN_TIMEOUT", f"steps.{step}.stop_grace_s: a stopped step has "
                f"{opts.stop_grace_s:g} s to write its checkpoint, torchrun's ranks too (its own wait is 30 s)"))
    if any(e.name == "TORCHINDUCTOR_CACHE_DIR" and e.value.startswith(str(layout.JOB)) for e in docker.env):
        why.append(("TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR", f"torch.compile's kernels kept in {job_dir(job)}/"
                    f"{layout.COMPILE_CACHE}: another run of the job (a resume) skips most of the compile"))
    if gpus is not None:
        note = " (the quotes are the docker CLI's syntax for a device list)" if gpus.device_ids else ""
        why.append(("--gpus", f"resources.gpus: {spec.resources.gpus}{note}"))
    return docker


def _local_args(job: LoadedJob, step: str, opts: StepSpec, machine: Machine, run_id: str, base_env: list[EnvVar],
                h_paths: dict[str, str], secrets: frozenset[str]) -> LocalArgs:
    """The step as a process on this machine (the local executor, Slurm's local runtime)."""
    host_run, log_name = job_dir(job) / run_id, f"{step}.log"
    local_env = [(e.name, e.value) for e in base_env]
    # The local executor keeps the caller's PYTHONPATH after the code (site folders a lab adds stay visible).
    inherited = machine.environ.get("PYTHONPATH", "")
    local_env += [("PYTHONPATH", ":".join(p for p in (_pythonpath(str(machine.code_dir), h_paths), inherited) if p)),
                  ("RUNNER_CONTEXT", str(host_run / f"{step}.context.json")), ("RUNNER_RUN_DIR", str(host_run))]
    local_env += [(e.name, e.value) for e in _compile_cache(base_env, job_dir(job), machine.environ)]
    local_env += _cuda_visible(job.spec.resources.gpus)
    return LocalArgs(
        argv=(machine.python, "-m", "runner.inside", "--log", str(host_run / log_name), "--",
              *_inner_command(job, step, opts, machine.python)),
        env=tuple(local_env), cwd=str(host_run), secrets=secrets)


def _mounts(job: LoadedJob, step: str, machine: Machine, why: list[tuple[str, str]], check: bool = False
            ) -> tuple[list[BindMount], dict[str, Any], dict[str, Any]]:
    """The step's bind mounts and its paths as the container and this machine name them. `check` (`convert
    --check`): the converted folder is not mounted, so checking can neither create nor write it."""
    spec = job.spec
    mounts = [BindMount(str(machine.code_dir), str(layout.CODE), True),
              BindMount(str(job_dir(job)), str(layout.JOB), False)]
    c: dict[str, Any] = {"code": str(layout.CODE), "job_dir": str(layout.JOB),
                         "checkpoints": str(layout.JOB / layout.CHECKPOINTS), "weights": {}, "third_party": {}}
    h: dict[str, Any] = {"code": str(machine.code_dir), "job_dir": str(job_dir(job)),
                         "checkpoints": str(job_dir(job) / layout.CHECKPOINTS), "weights": {}, "third_party": {}}
    why.append((f"--mount {layout.CODE}", "runner and policy code, read-only: editing code needs no image rebuild"))
    why.append((f"--mount {layout.JOB}", "the job's runs and checkpoints, read-write: outputs survive the container"))
    if spec.data.raw is not None and mounts_raw(job, step):
        mounts.append(BindMount(str(spec.data.raw), str(layout.RAW), True))
        c["raw"], h["raw"] = str(layout.RAW), str(spec.data.raw)
    if spec.data.converted is not None and not check:
        writes = step == "convert"
        mounts.append(BindMount(str(spec.data.converted), str(layout.CONVERTED), not writes))
        c["converted"], h["converted"] = str(layout.CONVERTED), str(spec.data.converted)
        why.append((f"--mount {layout.CONVERTED}",
                    "read-write: convert writes it" if writes else "read-only: only convert writes converted data"))
    for group, root in (("weights", layout.WEIGHTS), ("third_party", layout.THIRD_PARTY)):
        for name, path in getattr(spec, group).items():
            if group == "third_party" and name not in third_party_for(job, step):
                continue
            mounts.append(BindMount(str(path), str(root / name), True))
            c[group][name], h[group][name] = str(root / name), str(path)
    for m in spec.mounts:
        mounts.append(BindMount(str(m.source), m.target, m.read_only))
    return mounts, c, h


def host_path_map(mounts: list[BindMount]) -> dict[str, str]:
    """Container path -> host path of every mount, so a step inside a container can show and store the paths the
    user knows (`runs/x/checkpoints/...`, not `/job/checkpoints/...`)."""
    return {m.target: m.source for m in mounts}


def mounts_raw(job: LoadedJob, step: str | None) -> bool:
    """The recorded demos are mounted where they are read: convert (and `runner shell`); every step of a
    command job, whose steps the runner does not know."""
    return step in (None, "convert", "shell") or not job.policy.fixed_steps


def _ulimits(gpus: bool) -> tuple[Ulimit, ...]:
    # Unlimited memlock only where CUDA pins memory: an engine whose own hard limit is lower refuses it.
    stack = Ulimit("stack", 67108864, 67108864)
    return (Ulimit("memlock", -1, -1), stack) if gpus else (stack,)


def third_party_for(job: LoadedJob, step: str | None) -> list[str]:
    """The third_party checkouts `step` mounts and puts on PYTHONPATH: those its `third_party:` lists (all of them
    in `runner shell`, to try things by hand, and for `runner validate`, which checks every path)."""
    if step in (None, "shell"):
        return list(job.spec.third_party)
    opts = job.step(step)
    return list(opts.third_party) if opts is not None else []


def _shm(job: LoadedJob, step: str, opts: StepSpec, why: list[tuple[str, str]], warnings: list[str]) -> int:
    need = opts.loader_shm_bytes()
    explicit = opts.shm or job.spec.resources.shm
    if explicit is not None:
        if need > explicit:
            warnings.append(f"steps.{step}: /dev/shm {format_size(explicit)} is below the ~{_gib(need)} its "
                            f"{opts.num_workers} DataLoader workers need; expect 'Bus error' (raise shm or lower num_workers)")
        why.append((f"--shm-size {format_size(explicit)}", "set in the job"))
        return explicit
    base = TRAIN_SHM if step == "train" else OTHER_SHM
    size = max(base, -(-int(need * 1.25) // GIB) * GIB)
    reason = (f"{opts.num_workers} DataLoader workers need ~{_gib(need)}; raised with 25% headroom" if size > base
              else f"default for {step} (docker's 64m default crashes DataLoader workers with 'Bus error')")
    why.append((f"--shm-size {format_size(size)}", reason))
    return size


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}g"


def _gpus(value: Any) -> GpuRequest | None:
    if value == "all":
        return GpuRequest(all=True)
    if isinstance(value, list):
        return GpuRequest(device_ids=tuple(str(i) for i in value))
    return GpuRequest(count=value) if value else None


def _cuda_visible(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, list):
        return [("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in value))]
    if isinstance(value, int) and value > 0:
        return [("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(value)))]
    if value == 0:
        return [("CUDA_VISIBLE_DEVICES", "")]
    return []


def _env(job: LoadedJob, step: str, opts: StepSpec, run_id: str, nccl: str, gpus: bool) -> list[EnvVar]:
    env: dict[str, str] = {"PYTHONUNBUFFERED": "1", **layout.NVLS_OFF, "NCCL_SOCKET_IFNAME": nccl,
                           "GLOO_SOCKET_IFNAME": nccl, "RUNNER_STOP_GRACE_S": f"{opts.stop_grace_s:g}",
                           # torchrun's own SIGTERM -> SIGKILL wait for its ranks (torch >= 2.12 reads it; 30 s before)
                           "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(math.ceil(opts.stop_grace_s))}
    if gpus:
        env["NVIDIA_DRIVER_CAPABILITIES"] = "compute,utility,graphics" if step == "eval" else "compute,utility"
    env.update({"RUNNER_JOB": job.name, "RUNNER_STEP": step, "RUNNER_RUN_ID": run_id,
                "RUNNER_POLICY": job.policy.name})
    env.update({k: _str(v) for k, v in job.spec.env.items()})
    env.update({k: _str(v) for k, v in opts.env.items()})
    return [EnvVar(k, v, layout.is_secret(k, job.spec.secret_env)) for k, v in env.items()]


def _str(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _pythonpath(code: str, paths: Mapping[str, Any]) -> str:
    """The code, then the step's third_party checkouts (only those are in `paths`), in the job's order."""
    return ":".join([code, *paths["third_party"].values()])


def _container_env(base: list[EnvVar], c_run: Any, c_paths: Mapping[str, Any], opts: StepSpec) -> list[EnvVar]:
    return [*base, EnvVar("PYTHONPATH", _pythonpath(str(layout.CODE), c_paths)),
            EnvVar("HOME", layout.HOME), EnvVar("RUNNER_RUN_DIR", str(c_run)),
            *_compile_cache(base, layout.JOB, {})]


def _compile_cache(base: list[EnvVar], job_folder: Any, environ: Mapping[str, str]) -> list[EnvVar]:
    """torch.compile's cache variables into the job folder, unless the job or step (or, for the local executor, the
    caller's environment) already sets them."""
    taken = {e.name for e in base} | set(environ)
    return [EnvVar(k, v) for k, v in layout.compile_cache_env(job_folder).items() if k not in taken]


def gpu_processes(gpus: Any) -> str | None:
    """How many processes a multi-GPU step starts: a count, or torchrun's 'gpu' (all visible); None for one."""
    if gpus == "all":
        return "gpu"
    n = len(gpus) if isinstance(gpus, list) else int(gpus)
    return str(n) if n > 1 else None


def _inner_command(job: LoadedJob, step: str, opts: StepSpec, python: str) -> list[str]:
    cmd = opts.command
    launcher = dict(job.policy.multi_gpu).get(step)
    procs = gpu_processes(job.spec.resources.gpus)
    if cmd is None and launcher == "torchrun" and job.spec.resources.nodes > 1:
        # Several machines: torchrun takes --nnodes/--node_rank/--master_addr/--master_port from PET_* variables,
        # which runner.slurm_node sets on each node.
        return [python, "-m", "torch.distributed.run", "--nproc_per_node", procs or "1", "-m", job.policy.entry, step]
    if cmd is None and launcher == "torchrun" and procs is not None:
        # One process a GPU on this machine; rank 0 writes checkpoints and logs.
        return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", procs,
                "-m", job.policy.entry, step]
    if cmd is None:
        return [python, "-m", job.policy.entry, step]
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    return list(cmd)


def _context(job: LoadedJob, step: str, opts: StepSpec, run_id: str, start: Mapping[str, Any], mode: str,
             paths: Mapping[str, Any], run_dir: str, host_paths: dict[str, str] | None = None) -> StepContext:
    options = type(opts).model_validate(redact_spec(opts.model_dump(mode="json"), job.spec.secret_env))
    return StepContext(job=job.name, policy=job.policy.name, task=job.spec.task, step=step, run_id=run_id, **start,
                       mode=mode, run_dir=Path(run_dir), paths=dict(paths), options=options,
                       spec=redact_spec(job.spec.model_dump(mode="json")), host_paths=host_paths)


def redact_spec(data: dict[str, Any], extra: Iterable[str] | None = None) -> dict[str, Any]:
    """A spec (or step options) dump with the values of secret-named keys replaced, for records and contexts;
    `extra` defaults to the dump's own secret_env."""
    extra = list(data.get("secret_env") or []) if extra is None else list(extra)

    def walk(v: Any, key: str | None) -> Any:
        if isinstance(v, dict):
            return {k: walk(x, k) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, None) for x in v]
        return "<redacted>" if key is not None and layout.is_secret(key, extra) else v
    out: dict[str, Any] = walk(data, None)
    return out


def render_plan_text(plan: StepPlan) -> str:
    """What `runner plan` prints: the exact command, then why each non-obvious option is there."""
    from runner.executors import render_command

    executor = plan.executor
    cmd, _ = render_command(plan)
    lines = [f"# {plan.job} / {plan.step}  (run {plan.run_id}, executor {executor})", cmd, "", "# why:"]
    lines += [f"#   {opt}: {reason}" for opt, reason in plan.why]
    lines += _preview_lines(plan)
    if plan.options:
        lines += [f"# steps.{plan.step} options (* set by the job, the rest defaults):"]
        lines += [f"#   {'*' if mine else ' '} {name}: {json.dumps(value)}" for name, value, mine in plan.options]
    lines += [f"# WARNING: {w}" for w in plan.warnings]
    return "\n".join(lines)


def _preview_lines(plan: StepPlan) -> list[str]:
    if not plan.preview:
        return []
    out = []
    if plan.preview.get("launch"):
        out += ["# inside the step, it launches (engine " + str(plan.preview.get("engine", "")) + "):",
                "#   " + " ".join(shlex.quote(x) if not x.startswith("<") else x for x in plan.preview["launch"])]
    if plan.preview.get("note"):
        out += [f"#   ({plan.preview['note']})"]
    if plan.preview.get("checkpoints"):
        out += [f"# checkpoints: {plan.preview['checkpoints']}"]
    for name, value in plan.preview.items():
        if name.endswith(".json"):
            out += [f"# {name} (written to the run folder):"]
            out += [f"#   {line}" for line in json.dumps(value, indent=2).splitlines()]
    return out
