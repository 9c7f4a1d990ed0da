"""Typed job spec: the fields every job has. Policy-specific step options live in policies/<name>/config.py."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from runner import layout
from runner.spec.types import ByteSize, Gpus, JobName


class Model(BaseModel):
    """Strict base: unknown keys are errors, values are immutable once loaded."""

    # defer_build: a job validates against one policy's models; building every schema at import costs
    # a noticeable share of `runner plan`'s start-up.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


EnvValue = str | int | float | bool
#: Names a process environment can hold: docker's `--env A=B=C` would set A, and a newline ends the variable.
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvMap = dict[EnvName, EnvValue]


class StepSpec(Model):
    """Options every step has: how its container is run. Policies subclass this with their own options."""

    enabled: bool = True
    command: list[str] | str | None = Field(
        default=None, description="argv (or a shell string) run instead of the policy's own step")
    env: EnvMap = Field(default_factory=dict)
    shm: ByteSize | None = Field(default=None, description="/dev/shm size; default sized from the data loader")
    network: Literal["bridge", "host", "none"] | None = None
    devices: list[str] = Field(default_factory=list, description="host devices, e.g. /dev/bus/usb")
    privileged: bool = False
    third_party: list[str] = Field(
        default_factory=list, description="names in the job's third_party section this step mounts read-only and puts "
        "on PYTHONPATH, e.g. [gello] for deploy (GELLO's robot code)")
    num_workers: int = Field(default=0, ge=0, description="DataLoader worker processes (they need /dev/shm)")
    stop_grace_s: float = Field(default=30.0, gt=0, le=3600, description="seconds between SIGTERM (Ctrl-C, "
                                "`runner stop`) and SIGKILL: the time a training step has to write its checkpoint")

    @model_validator(mode="before")
    @classmethod
    def _gello_flag(cls, data: Any) -> Any:
        """`gello: true`, the spelling before third_party lists, still means `third_party: [gello]`."""
        if isinstance(data, dict) and "gello" in data:
            data = dict(data)
            flag = data.pop("gello")
            if flag is True and "gello" not in (data.get("third_party") or []):
                data["third_party"] = [*(data.get("third_party") or []), "gello"]
            elif flag not in (True, False):
                msg = f"gello: expected true or false (the old spelling of third_party: [gello]), got {flag!r}"
                raise ValueError(msg)
        return data

    def loader_shm_bytes(self) -> int:
        """Shared memory the step's DataLoader workers need; 0 when it loads in-process."""
        return 0

    def checkpoints_disk(self) -> tuple[int, int] | None:
        """(bytes a checkpoint, the most a run keeps at once) where a policy can tell before it runs, else None."""
        return None

    def gpu_memory_fix(self, step: str) -> str | None:
        """What a step that ran out of GPU memory should change, in the policy's own option names (None: the
        generic advice, runner.diagnose)."""
        return None


class StepsModel(Model):
    """Base of a policy's `steps:` mapping: a step written with no options (`train:`) gets the defaults."""

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_default(cls, v: object) -> object:
        return {} if v is None else v


class Mount(Model):
    source: Path
    target: str
    read_only: bool = True

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        return check_mount_target(v)


def check_mount_target(v: str) -> str:
    """An absolute, normal container path that neither hides the runner's own mounts nor replaces a system folder."""
    if not v.startswith("/"):
        msg = f"a mount target is an absolute path inside the container, got {v!r}"
        raise ValueError(msg)
    if any(c in v for c in ",\n\r\0"):
        msg = f"a mount target cannot hold a comma or a control character (docker reads ',' as an option), got {v!r}"
        raise ValueError(msg)
    p = PurePosixPath(v)
    if p == PurePosixPath("/"):
        msg = "a mount target of / would replace the container's whole file system; pick a folder such as /calib"
        raise ValueError(msg)
    if ".." in p.parts or (str(p) != v.rstrip("/") and v != "/"):
        msg = f"write the mount target as a plain path (no '..', '//' or trailing '/'): {v!r}"
        raise ValueError(msg)
    for own in layout.RUNNER_TARGETS:
        if p == own or own.is_relative_to(p) or p.is_relative_to(own):
            msg = f"{v} overlaps the runner's own mount {own}; pick another target"
            raise ValueError(msg)
    for system in layout.SYSTEM_TARGETS:
        if system.is_relative_to(p):
            msg = f"{v} would replace the container's {system}; mount below it (e.g. {system / 'calib'}) or elsewhere"
            raise ValueError(msg)
    return v


class Resources(Model):
    gpus: Gpus = 0
    shm: ByteSize | None = Field(default=None, description="/dev/shm for every step unless the step sets its own")
    cpus: float | None = Field(default=None, gt=0)
    memory: ByteSize | None = None
    nccl_socket_ifname: str | None = Field(default=None, description="override the detected interface")
    nodes: int = Field(default=1, ge=1)


class SlurmSpec(Model):
    """How `executor: slurm` (or `runner submit JOB --to slurm`) hands steps to Slurm (templates/sbatch.j2)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = Field(default=None, description="sbatch --time, e.g. 24:00:00")
    gpus_per_node: int | None = Field(default=None, ge=0, description="default: resources.gpus when it is a count")
    runtime: Literal["docker", "pyxis", "apptainer", "local"] = Field(
        default="docker", description="how each node starts the step: docker on the node, pyxis (srun "
        "--container-image), Apptainer (apptainer exec --nv), or the node's own Python")
    apptainer_image: str | None = Field(default=None, description="a .sif for runtime apptainer; default the docker image")
    signal: Literal["USR1", "USR2", "TERM", "INT", "URG"] = Field(
        default="USR2", description="sent to the batch script `grace_s` before the time limit or on preemption; the "
        "script turns it into a checkpoint-and-stop of the step (launchers and NCCL leave USR2 alone)")
    grace_s: int = Field(default=180, ge=10, description="seconds between the signal and the end of the allocation")
    max_requeues: int = Field(default=3, ge=0, description="requeues after preemption/time limit before giving up")
    port: int | None = Field(default=None, gt=1023, lt=65536,
                             description="MASTER_PORT; default a free port on the first node, chosen at start")
    reach_timeout_s: int = Field(default=60, ge=1, description="several nodes: how long each node tries to reach the "
                                 "rendezvous (MASTER_ADDR, MASTER_PORT+1) before the step fails naming node and interface")
    image_cache: Path | None = Field(
        default=None, description="a folder every node sees: the image is saved there once per content tag "
        "(docker: docker save, loaded by a node that lacks it; pyxis: an enroot squashfs; apptainer: a SIF, both "
        "made here at submit and run from there); unset, and no registry: every node has it already")
    registry: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._/-]+)?$",
        description="a registry every node pulls from, e.g. registry.lab:5000/robo-runner: the image is pushed there "
        "at submit under its content tag (not again while it is there) and a node that lacks it pulls it")
    extra: list[str] = Field(default_factory=list, description="extra #SBATCH options, e.g. --constraint=h100")

    @model_validator(mode="after")
    def _one_way_to_the_nodes(self) -> SlurmSpec:
        if self.registry and self.image_cache:
            msg = ("slurm.registry and slurm.image_cache both say how the nodes get the image: set one (a registry "
                   "the nodes pull from, or a shared folder)")
            raise ValueError(msg)
        return self


class ImageSpec(Model):
    base: str = Field(default="robo-runner/os:bookworm", description="image the policy image is built FROM")
    pip: list[str] = Field(default_factory=list, description="extra pip requirements")
    apt: list[str] = Field(default_factory=list, description="extra Debian packages")
    build_args: dict[str, str] = Field(default_factory=dict)
    ca_bundle: Path | None = Field(default=None, description="CA bundle for pip; default $PIP_CERT / $SSL_CERT_FILE")
    wheelhouse: Path | None = Field(default=None, description="local wheels for pip; default $PIP_FIND_LINKS")
    pip_index_url: str | None = None
    pip_extra_index_url: str | None = None


class DataPaths(Model):
    raw: Path | None = Field(default=None, description="recorded demonstrations (input of convert)")
    converted: Path | None = Field(default=None, description="converted training data (output of convert)")


class Outputs(Model):
    runs_dir: Path = Path("runs")


class JobCommon(Model):
    """Fields shared by every policy's job."""

    name: JobName
    description: str = ""
    task: str | None = None
    executor: str = Field(default="docker", description="docker, local, slurm, or one a package registered")
    data: DataPaths = Field(default_factory=DataPaths)
    weights: dict[str, Path] = Field(default_factory=dict)
    third_party: dict[str, Path] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    image: ImageSpec = Field(default_factory=ImageSpec)
    env: EnvMap = Field(default_factory=dict)
    secret_env: list[EnvName] = Field(
        default_factory=list, description="extra env names whose values are never printed or recorded")
    allow_host_access: bool = Field(
        default=False, description="allow mounting the host's / or the Docker socket (root on the host)")
    mounts: list[Mount] = Field(default_factory=list)
    outputs: Outputs = Field(default_factory=Outputs)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, v: str) -> str:
        from runner.executors import UnknownExecutor, names

        if v not in names():
            raise ValueError(str(UnknownExecutor(v, names())))
        return v


def step_model(job_model: type[JobCommon], step: str) -> type[StepSpec]:
    """The options model of `step` in a policy's job model (Dp3Job, "train" -> Dp3Train); StepSpec when the policy
    declares none for it (`runner shell`)."""
    import typing

    steps = job_model.model_fields["steps"].annotation
    steps_cls = steps if isinstance(steps, type) and issubclass(steps, BaseModel) else None
    field = steps_cls.model_fields.get(step) if steps_cls is not None else None
    if field is None and typing.get_origin(steps) is dict:  # a policy whose job names its own steps
        found: Any = typing.get_args(steps)[1]
    else:
        found = field.annotation if field is not None else StepSpec
    for cand in typing.get_args(found) or (found,):  # `Dp3Train | None`
        if isinstance(cand, type) and issubclass(cand, StepSpec):
            return cand
    return StepSpec


def default_of(model: type[BaseModel], name: str) -> Any:
    """The default `model` declares for field `name`. Library dataclasses (the conversion's, the control loop's)
    take their defaults from the job models through this, so every option's default is written once."""
    return model.model_fields[name].get_default(call_default_factory=True)
