"""The sbatch script of a step (templates/sbatch.j2), rendered from the same StepPlan as the single-machine
executors: the docker rendering is render_cli() of the plan's DockerRunArgs; pyxis and Apptainer take the same
mounts, env, workdir and command. Pure: no Slurm command runs here."""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import jinja2

from runner import layout
from runner.dockerargs import DockerRunArgs, render_cli
from runner.errors import RunnerError
from runner.plan import StepPlan
from runner.slurm_node import NODE_ENV
from runner.spec.load import LoadedJob
from runner.spec.models import SlurmSpec
from runner.spec.types import format_size

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


class SlurmRenderError(RunnerError):
    """The job cannot be expressed for Slurm as written (names the field)."""

    exit_code = 2


def gpus_per_node(job: LoadedJob) -> int:
    s = job.spec
    if s.slurm.gpus_per_node is not None:
        return s.slurm.gpus_per_node
    g = s.resources.gpus
    if isinstance(g, list):
        return len(g)
    if g == "all":
        msg = f"{job.file}: resources.gpus is 'all'; Slurm allocates a count: set slurm.gpus_per_node"
        raise SlurmRenderError(msg)
    return int(g)


def _node_docker(plan: StepPlan) -> DockerRunArgs:
    """The plan's container with the per-node values passed by name (detected on each node), removed on exit."""
    env = tuple(e for e in plan.docker.env if e.name not in NODE_ENV)
    return replace(plan.docker, env=env, pass_env=tuple(dict.fromkeys((*plan.docker.pass_env, *NODE_ENV))),
                   name=plan.docker.name + "-n${SLURM_NODEID}-r${SLURM_RESTART_COUNT:-0}")


def _q(argv: list[str]) -> str:
    """Shell words; `${...}` of the node's environment stays expandable."""
    out = []
    for a in argv:
        out.append(f'"{a}"' if "${" in a and '"' not in a else shlex.quote(a))
    return " ".join(out)


#: The GPUs Slurm allocated to the step on this node, as host device ids (docker needs those, not the
#: renumbered CUDA_VISIBLE_DEVICES of a cgroup-constrained step).
SLURM_GPUS = '--gpus "\\"device=${SLURM_STEP_GPUS:-${SLURM_JOB_GPUS:-}}\\""'


def container_command(plan: StepPlan, runtime: str, sif: str | None = None, gpus: bool = False) -> tuple[str, str]:
    """(extra srun options, the per-node command) for a runtime. Under Slurm the step gets the GPUs Slurm
    allocated on that node, never the device ids a job names for a single workstation."""
    d = plan.docker
    if runtime == "docker":
        argv = render_cli(replace(_node_docker(plan), gpus=None))
        head = _q([argv[0], argv[1], "--rm"]) + (f" {SLURM_GPUS}" if gpus else "")
        return "", f"{head} {_q(argv[2:])}"
    if runtime == "pyxis":
        mounts = ",".join(f"{m.source}:{m.target}" + (":ro" if m.read_only else "") for m in d.mounts)
        extra = f"--container-image={shlex.quote(pyxis_image(d.image))} --container-mounts={shlex.quote(mounts)} " \
                f"--container-workdir={shlex.quote(d.workdir)} "
        env = [f"{e.name}={e.value}" for e in d.env if not e.secret and e.name not in NODE_ENV]
        return extra, _q(["env", *env, *d.command])
    if runtime == "apptainer":
        image = sif or apptainer_image(d.image)
        argv = ["apptainer", "exec", "--nv", "--containall", "--pwd", d.workdir]
        for m in d.mounts:
            argv += ["--bind", f"{m.source}:{m.target}" + (":ro" if m.read_only else "")]
        for e in d.env:
            if not e.secret and e.name not in NODE_ENV:
                argv += ["--env", f"{e.name}={e.value}"]
        return "", _q([*argv, image, *d.command])
    # CUDA_VISIBLE_DEVICES is Slurm's to set on the node (the job's workstation ids do not apply there).
    env = [f"{k}={v}" for k, v in plan.local.env if k not in NODE_ENV and k != "CUDA_VISIBLE_DEVICES"]
    return "", _q(["env", *env, *plan.local.argv])


#: What each container runtime keeps in slurm.image_cache: a `docker save` archive, an enroot squashfs, a SIF.
CACHE_SUFFIX = {"docker": ".tar", "pyxis": ".sqsh", "apptainer": ".sif"}


def cache_file(cache: Path, tag: str, runtime: str = "docker") -> Path:
    """Where the image with content tag `tag` is kept for the nodes: one file a tag and runtime, so an unchanged
    image is never made or shipped twice."""
    return cache / (tag.replace("/", "_").replace(":", "_") + CACHE_SUFFIX[runtime])


def node_image(slurm: SlurmSpec, tag: str) -> str:
    """The image the nodes run, for the image built here as `tag`: its name in slurm.registry, the squashfs or SIF
    in slurm.image_cache (pyxis, Apptainer), or the tag itself (docker: loaded from the cache, or there already)."""
    if slurm.registry:
        return f"{slurm.registry.rstrip('/')}/{tag}"
    if slurm.image_cache is not None and slurm.runtime in ("pyxis", "apptainer"):
        return str(cache_file(slurm.image_cache, tag, slurm.runtime))
    return tag


def _registry_host(ref: str) -> tuple[str, str] | None:
    """(registry, the rest) when `ref` names a registry (its first part has a '.' or ':', or is localhost)."""
    first, _, rest = ref.partition("/")
    return (first, rest) if rest and ("." in first or ":" in first or first == "localhost") else None


def pyxis_image(ref: str) -> str:
    """pyxis/enroot spell a registry image `registry#repo:tag`; a file path stays as it is."""
    if ref.startswith("/"):
        return ref
    split = _registry_host(ref)
    return f"{split[0]}#{split[1]}" if split else ref


def apptainer_image(ref: str) -> str:
    """A SIF path as it is; a registry image as docker://; an image in the node's Docker engine as docker-daemon://."""
    if ref.startswith("/"):
        return ref
    return ("docker://" if _registry_host(ref) else "docker-daemon://") + ref


def image_check(tag: str, cache: Path | None, registry: bool = False) -> str:
    """The per-node shell that makes sure `tag` is in the node's engine: pulled from the registry, loaded from the
    cache, or a message naming the node when it has no way to get it (exit 125)."""
    have = f"docker image inspect {shlex.quote(tag)} >/dev/null 2>&1"
    if registry:
        get = (f'echo "[runner] node $(hostname): pulling {tag}"; docker pull -q {shlex.quote(tag)} >/dev/null || '
               f'{{ echo "[runner] node $(hostname) cannot pull {tag}: is the registry reachable from it, and does '
               'its Docker engine trust it (insecure-registries, certificates, docker login)?" >&2; exit 125; }')
        return f"{have} || {{ {get}; }}"
    if cache is None:
        fix = (f'echo "[runner] node $(hostname): image {tag} is not in its Docker engine; set slurm.image_cache to '
               'a folder every node sees, or slurm.registry" >&2; exit 125')
        return f"{have} || {{ {fix}; }}"
    archive = cache_file(cache, tag)
    load = (f'echo "[runner] node $(hostname): loading {tag} from {archive}"; docker load -q -i {shlex.quote(str(archive))}'
            " || exit 125")
    return f"{have} || {{ {load}; }}"


def path_checks(plan: StepPlan) -> list[str]:
    """Shell tests, one a path, that fail naming the node and the path when a node cannot see what the step needs
    at the same path as the submitting machine: the code, the run folder (written), the data and weights."""
    paths = {_code_dir(plan): ("the runner code", False)}
    for m in plan.docker.mounts:
        if m.target != str(layout.CODE):
            paths.setdefault(m.source, (f"mounted at {m.target}", not m.read_only))
    checks = []
    for path, (what, writes) in paths.items():
        test = f"[ -d {shlex.quote(path)} ] || [ -f {shlex.quote(path)} ]"
        if writes:
            test = f"{{ {test}; }} && [ -w {shlex.quote(path)} ]"
        need = "see and write" if writes else "see"
        msg = (f"[runner] node $(hostname) cannot {need} {_dq(path)} ({what}): every node needs it at the same path, "
               "on storage they share (NFS, Lustre, ...)")
        checks.append(f'{test} || {{ echo "{msg}" >&2; exit 2; }}')
    return checks


def _dq(text: str) -> str:
    """`text` safe inside a double-quoted shell string (where $(hostname) beside it still expands)."""
    return "".join("\\" + c if c in '"$`\\' else c for c in text)


def node_check(plan: StepPlan, runtime: str, cache: Path | None, registry: bool = False) -> str:
    """The command every node runs before the step: the paths it needs, then (docker) the step's image."""
    script = "; ".join(path_checks(plan))
    if runtime == "docker":
        script += "; " + image_check(plan.docker.image, cache, registry)
    return "bash -c " + shlex.quote(script)


def _code_dir(plan: StepPlan) -> str:
    """Where runner/ is on the nodes (a shared file system, as the job's data): the local plan's code folder."""
    path = dict(plan.local.env).get("PYTHONPATH", "")
    return path.split(":")[0] if path else str(Path(__file__).resolve().parent.parent)


def script_path(plan: StepPlan) -> Path:
    """Where a step's batch script is written and submitted from: <run dir>/<step>.sbatch."""
    return plan.run_dir / f"{plan.step}.sbatch"


def render_sbatch(job: LoadedJob, plan: StepPlan, host_python: str) -> str:
    """`host_python`: this machine's interpreter, which runtime `local` runs the step with on the nodes; the
    container runtimes run the node helper with the nodes' python3."""
    s = job.spec
    rt = s.slurm.runtime
    if rt != "local":  # the nodes run the image where they find it: the registry, the cache, their engine
        plan = replace(plan, docker=replace(plan.docker, image=node_image(s.slurm, plan.docker.image)))
    python = host_python if rt == "local" else "python3"
    gpus = gpus_per_node(job)
    srun_extra, command = container_command(plan, rt, s.slurm.apptainer_image, gpus=gpus > 0)
    node_args = ["--check-port", "--reach-timeout", str(s.slurm.reach_timeout_s)] if s.resources.nodes > 1 else []
    if s.resources.nccl_socket_ifname:
        node_args += ["--ifname", s.resources.nccl_socket_ifname]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    values: dict[str, Any] = {
        "job": job.name, "step": plan.step, "run_id": plan.run_id, "runtime": rt,
        "name": f"rr-{job.name}-{plan.step}", "nodes": s.resources.nodes, "gpus_per_node": gpus,
        "cpus": int(s.resources.cpus) if s.resources.cpus else None,
        "mem": format_size(int(s.resources.memory)).upper() if s.resources.memory else None,
        "time": s.slurm.time, "partition": s.slurm.partition, "account": s.slurm.account, "qos": s.slurm.qos,
        # The signal comes early enough for the step's own stop grace (its checkpoint) and a minute to spare.
        "run_dir": str(plan.run_dir), "signal": s.slurm.signal, "grace_s": max(s.slurm.grace_s, int(plan.stop_grace_s) + 60),
        "max_requeues": s.slurm.max_requeues, "port": s.slurm.port, "extra": s.slurm.extra,
        "srun_extra": srun_extra, "python": f"env PYTHONPATH={shlex.quote(_code_dir(plan))} {python}",
        "node_args": " ".join(node_args), "command": command,
        "node_check": node_check(plan, rt, s.slurm.image_cache, registry=bool(s.slurm.registry)),
    }
    return env.get_template("sbatch.j2").render(**values)
