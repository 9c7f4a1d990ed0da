"""The policies the runner knows: the built-ins below, those a package declares in the entry-point group
`robo_runner.policies` (`mine = "my_pkg.policy:POLICY"`, a PolicyInfo), and those registered at run time with
`register(PolicyInfo(...))`. A policy is one module of step functions plus its job model: see PolicyInfo.
Importing this module must stay cheap (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.plugins import entry_point_refs, resolve

if TYPE_CHECKING:
    from runner.spec.models import JobCommon

#: Steps `runner run JOB` executes, in this order, when the job lists them. Deploy moves a robot:
#: it only ever runs when asked for by name.
PIPELINE = ("convert", "train", "eval")


@dataclass(frozen=True)
class PolicyInfo:
    """What the runner needs to know about a policy to build its image and run its steps."""

    name: str
    model_path: str  # "module:Class" of the job model, imported only for the policy a job uses
    image: str  # images/<image>/ build context and templates/Dockerfile.<image>.j2
    steps: tuple[str, ...]  # the steps a job of this policy may list
    entry: str  # module run inside the image as `python -m <entry> <step>`; its STEPS maps step -> function
    fixed_steps: bool = True  # False: the job names its own steps (command policy)
    # Steps that run one process a GPU when the job asks for several GPUs, and the launcher that starts them.
    multi_gpu: tuple[tuple[str, str], ...] = ()
    # "module:function(weights, instructions, say)" that makes tiny stand-in weights for sample jobs
    sample_weights: str | None = None
    # "module:function(step, options (the step's typed model), gpus, nodes) -> dict | None": what a step launches
    # inside itself (RDT's
    # accelerate line and DeepSpeed config), shown by `runner plan`; the module must not import torch
    preview: str | None = None

    @property
    def job_model(self) -> type[JobCommon]:
        model: type[JobCommon] = resolve(self.model_path)
        return model


BUILTIN: dict[str, PolicyInfo] = {
    "dp3": PolicyInfo(
        name="dp3",
        model_path="policies.dp3.config:Dp3Job",
        image="dp3",
        steps=("convert", "train", "eval", "deploy"),
        entry="policies.dp3.steps",
        multi_gpu=(("train", "torchrun"),),
    ),
    "rdt": PolicyInfo(
        name="rdt",
        model_path="policies.rdt.config:RdtJob",
        image="rdt",
        steps=("convert", "train", "eval", "deploy"),
        entry="policies.rdt.steps",
        sample_weights="policies.rdt.tiny:make_missing",
        preview="policies.rdt.launch:preview",
    ),
    "command": PolicyInfo(
        name="command",
        model_path="policies.command:CommandJob",
        image="base",
        steps=(),
        entry="",
        fixed_steps=False,
    ),
}


GROUP = "robo_runner.policies"
_REGISTERED: dict[str, PolicyInfo] = {}


def register(info: PolicyInfo) -> None:
    """Make a policy known to this process (tests, notebooks); packages use the entry-point group instead."""
    _REGISTERED[info.name] = info


def _plugins() -> dict[str, PolicyInfo]:
    found = {}
    for name, ref in entry_point_refs(GROUP).items():
        info = resolve(ref)
        if not isinstance(info, PolicyInfo) or info.name != name:
            msg = f"entry point {name} = {ref} in {GROUP} must name a PolicyInfo called {name!r}"
            raise TypeError(msg)
        found[name] = info
    return found


def policies() -> dict[str, PolicyInfo]:
    """Every known policy by name: built-ins, then entry points, then those registered here (later ones win)."""
    return {**BUILTIN, **_plugins(), **_REGISTERED}


def get_policy(name: str) -> PolicyInfo:
    """The policy called `name` (KeyError when unknown; callers validate names first)."""
    return policies()[name]
