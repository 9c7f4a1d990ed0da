"""load_job(path) -> LoadedJob: parse, interpolate, validate, all problems reported at once."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from policies import POLICIES, PolicyInfo
from runner.errors import SpecError, SpecProblem
from runner.spec.errors_fmt import problems_from_validation, suggest
from runner.spec.interpolate import interpolate
from runner.spec.models import JobCommon
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


def load_job(path: Path, environ: Mapping[str, str]) -> LoadedJob:
    """Read and validate a job file; raises SpecError listing every problem in it."""
    text, located = load_yaml(path)
    return _validate(located, text, environ)


def parse_job_text(text: str, file: Path, environ: Mapping[str, str]) -> LoadedJob:
    """Validate job text as if read from `file` (used for copies kept in run records)."""
    return _validate(parse_yaml(text, file), text, environ)


def _validate(located: Located, text: str, environ: Mapping[str, str]) -> LoadedJob:
    file = located.file
    if not isinstance(located.data, dict):
        kind = "empty" if located.data is None else f"a {type(located.data).__name__}"
        raise SpecError([SpecProblem(file, 1, 1, "", f"a job file is a YAML mapping of keys, this one is {kind}")])
    data, problems = interpolate(located, environ)
    policy_name = data.get("policy")
    if policy_name not in POLICIES:
        msg = ("is required: one of " + ", ".join(POLICIES) if policy_name is None
               else f"unknown policy {policy_name!r}{suggest(str(policy_name), POLICIES)} (known: {', '.join(POLICIES)})")
        problems.append(located.problem(("policy",), msg))
        raise SpecError(problems)
    policy = POLICIES[policy_name]
    spec: JobCommon | None = None
    try:
        spec = policy.job_model.model_validate(data)
    except ValidationError as e:
        problems.extend(problems_from_validation(e.errors(), located, policy.job_model))
    if spec is not None and not policy.fixed_steps:
        problems.extend(_check_free_steps(spec, located))
    if spec is not None and policy.fixed_steps:
        problems.extend(_check_host_access(spec, located, policy))
    if problems or spec is None:
        raise SpecError(problems)
    base = base_dir_for(file)
    return LoadedJob(file=file, text=text, spec=absolutize(spec, base), policy=policy, base_dir=base)


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
    })
