"""load_job(path) -> LoadedJob: parse, interpolate, validate, all problems reported at once."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from policies import PolicyInfo, policies
from runner.errors import SpecError, SpecProblem
from runner.spec.errors_fmt import problems_from_validation, suggest
from runner.spec.interpolate import interpolate
from runner.spec.models import JobCommon, StepSpec
from runner.spec.overrides import apply as apply_overrides
from runner.spec.yamlsrc import Located, load_yaml, parse_yaml

_STEP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class LoadedJob:
    """A validated job: the file, its text as written, the typed spec (paths absolute) and its policy."""

    file: Path
    text: str
    spec: JobCommon
    policy: PolicyInfo
    base_dir: Path
    overrides: tuple[str, ...] = ()  # `key=value` arguments applied over the file (runner/spec/overrides.py)

    @property
    def name(self) -> str:
        return self.spec.name

    def step_names(self) -> list[str]:
        """Steps this job lists, in the order they run."""
        steps = self.spec.steps  # type: ignore[attr-defined]
        if isinstance(steps, dict):
            return list(steps)
        return [s for s in self.policy.steps if getattr(steps, s) is not None]

    def step(self, name: str) -> Any:
        """The typed options of step `name` (None when the job does not list it)."""
        steps = self.spec.steps  # type: ignore[attr-defined]
        return steps.get(name) if isinstance(steps, dict) else getattr(steps, name, None)


def base_dir_for(file: Path) -> Path:
    """Relative paths in a job resolve against the repo root: the folder above jobs/, else the file's folder."""
    parent = file.resolve().parent
    return parent.parent if parent.name == "jobs" else parent


def load_job(path: Path, environ: Mapping[str, str], overrides: Sequence[str] = ()) -> LoadedJob:
    """Read and validate a job file (with command-line overrides); raises SpecError listing every problem."""
    text, located = load_yaml(path)
    return _validate(apply_overrides(located, list(overrides)), text, environ, tuple(overrides))


def parse_job_text(text: str, file: Path, environ: Mapping[str, str], overrides: Sequence[str] = ()) -> LoadedJob:
    """Validate job text as if read from `file` (used for copies kept in run records)."""
    return _validate(apply_overrides(parse_yaml(text, file), list(overrides)), text, environ, tuple(overrides))


def _validate(located: Located, text: str, environ: Mapping[str, str], overrides: tuple[str, ...] = ()) -> LoadedJob:
    file = located.file
    if not isinstance(located.data, dict):
        kind = "empty" if located.data is None else f"a {type(located.data).__name__}"
        raise SpecError([SpecProblem(file, 1, 1, "", f"a job file is a YAML mapping of keys, this one is {kind}")])
    data, problems = interpolate(located, environ)
    policy_name = data.get("policy")
    known = policies()
    if policy_name not in known:
        msg = ("is required: one of " + ", ".join(known) if policy_name is None
               else f"unknown policy {policy_name!r}{suggest(str(policy_name), known)} (known: {', '.join(known)})")
        problems.append(located.problem(("policy",), msg))
        raise SpecError(problems)
    policy = known[policy_name]
    spec: JobCommon | None = None
    try:
        spec = policy.job_model.model_validate(data)
    except ValidationError as e:
        problems.extend(problems_from_validation(e.errors(), located, policy.job_model))
    if spec is not None and not policy.fixed_steps:
        problems.extend(_check_free_steps(spec, located))
    if spec is not None and policy.fixed_steps:
        problems.extend(_check_host_access(spec, located, policy))
    if spec is not None:
        problems.extend(_check_third_party(spec, located))
    if problems or spec is None:
        raise SpecError(problems)
    base = base_dir_for(file)
    spec = absolutize(spec, base)
    problems = _check_host_paths(spec, located)
    if problems:
        raise SpecError(problems)
    return LoadedJob(file=file, text=text, spec=spec, policy=policy, base_dir=base, overrides=overrides)


#: Where Docker engines listen: mounting the socket (or a folder above it) gives the step root on the host.
DOCKER_SOCKETS = (Path("/var/run/docker.sock"), Path("/run/docker.sock"))


def host_access(path: Path) -> str | None:
    """Why mounting `path` hands the host to the step, or None."""
    real = Path(os.path.realpath(path))
    if real == Path("/"):
        return "it is the host's whole file system"
    for sock in DOCKER_SOCKETS:
        if real == sock or sock.is_relative_to(real) or real.name == "docker.sock":
            return f"it gives the Docker socket ({sock}), which is root on the host"
    return None


def _check_host_paths(spec: JobCommon, located: Located) -> list[SpecProblem]:
    """Refuse host-taking mounts unless the job says allow_host_access; converted data never inside the raw data."""
    out = []
    paths: list[tuple[tuple[str | int, ...], Path]] = [(("mounts", i, "source"), m.source) for i, m in enumerate(spec.mounts)]
    paths += [(("weights", k), v) for k, v in spec.weights.items()]
    paths += [(("third_party", k), v) for k, v in spec.third_party.items()]
    paths += [(("data", k), v) for k, v in (("raw", spec.data.raw), ("converted", spec.data.converted)) if v is not None]
    if not spec.allow_host_access:
        for loc, path in paths:
            why = host_access(path)
            if why:
                out.append(located.problem(loc, f"{path} cannot be mounted: {why}. If the step really needs it, set "
                                                "`allow_host_access: true` in the job"))
    raw, converted = spec.data.raw, spec.data.converted
    if raw is not None and converted is not None:
        r, c = Path(os.path.realpath(raw)), Path(os.path.realpath(converted))
        if c == r or c.is_relative_to(r) or r.is_relative_to(c):
            out.append(located.problem(("data", "converted"), f"{converted} overlaps data.raw ({raw}): convert writes "
                                       "data.converted and must never write into the recorded demos; use a separate folder"))
    return out


def _check_free_steps(spec: JobCommon, located: Located) -> list[SpecProblem]:
    steps: dict[str, Any] = spec.steps  # type: ignore[attr-defined]
    out = [located.problem(("steps", name), "a step name is lowercase letters, digits, '_' or '-'")
           for name in steps if not _STEP_NAME.match(name)]
    if not steps:
        out.append(located.problem(("steps",), "a command job needs at least one step with a `command`"))
    return out


def _check_host_access(spec: JobCommon, located: Located, policy: PolicyInfo) -> list[SpecProblem]:
    """Only deploy talks to the robot: no other step of a policy gets the host network, devices or privileges."""
    out = []
    for name in policy.steps:
        opts = getattr(spec.steps, name, None)  # type: ignore[attr-defined]
        if opts is None or name == "deploy":
            continue
        for key, bad in (("network", opts.network == "host"), ("devices", bool(opts.devices)),
                         ("privileged", opts.privileged)):
            if bad:
                out.append(located.problem(("steps", name, key),
                                           f"only the deploy step may ask for host {key}; {name} runs isolated"))
    return out


def _check_third_party(spec: JobCommon, located: Located) -> list[SpecProblem]:
    """A step's third_party names are entries of the job's third_party section."""
    out = []
    for name, opts in _step_items(spec):
        for i, entry in enumerate(opts.third_party):
            if entry not in spec.third_party:
                known = ", ".join(spec.third_party) or "none"
                out.append(located.problem(("steps", name, "third_party", i),
                                           f"{entry!r} is not in the job's third_party section (it has: {known}); add "
                                           f"`third_party: {{{entry}: /path/to/checkout}}`{suggest(entry, spec.third_party)}"))
    return out


def _step_items(spec: JobCommon) -> list[tuple[str, StepSpec]]:
    steps: Any = getattr(spec, "steps", {})
    items = steps.items() if isinstance(steps, dict) else ((n, getattr(steps, n)) for n in type(steps).model_fields)
    return [(n, o) for n, o in items if isinstance(o, StepSpec)]


def _abs(p: Path | None, base: Path) -> Path | None:
    if p is None:
        return None
    p = p.expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def absolutize(spec: JobCommon, base: Path) -> JobCommon:
    """Make every host path in the spec absolute, relative ones against `base`."""
    def req(p: Path) -> Path:
        out = _abs(p, base)
        assert out is not None
        return out

    return spec.model_copy(update={
        "data": spec.data.model_copy(update={"raw": _abs(spec.data.raw, base),
                                             "converted": _abs(spec.data.converted, base)}),
        "weights": {k: req(v) for k, v in spec.weights.items()},
        "third_party": {k: req(v) for k, v in spec.third_party.items()},
        "mounts": [m.model_copy(update={"source": req(m.source)}) for m in spec.mounts],
        "image": spec.image.model_copy(update={"ca_bundle": _abs(spec.image.ca_bundle, base),
                                               "wheelhouse": _abs(spec.image.wheelhouse, base)}),
        "outputs": spec.outputs.model_copy(update={"runs_dir": req(spec.outputs.runs_dir)}),
        "slurm": spec.slurm.model_copy(update={"image_cache": _abs(spec.slurm.image_cache, base)}),
    })
