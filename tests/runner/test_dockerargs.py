import dataclasses
import shlex

import pytest

from runner.dockerargs import BindMount, DockerRunArgs, EnvVar, GpuRequest, Ulimit, render_cli, render_shell, to_sdk_kwargs

FULL = DockerRunArgs(
    image="img:1", command=("python3", "-c", "print(1)"), name="n", user="1:2", workdir="/w",
    labels=(("a", "b"),), env=(EnvVar("K", "v"), EnvVar("API_TOKEN", "s3cret", secret=True)), pass_env=("WANDB_X",),
    mounts=(BindMount("/h", "/c", True),), gpus=GpuRequest(count=2), shm_size=1024**3, ipc_mode="private",
    network="host", ulimits=(Ulimit("stack", 1, 1),), devices=("/dev/x",), privileged=True, cpus=1.5,
    memory=2 * 1024**3, init=True, interactive=True, tty=True)

CHANGED = {
    "image": "img:2", "command": ("true",), "name": "m", "user": "3:4", "workdir": "/v", "labels": (("c", "d"),),
    "env": (EnvVar("K", "w"),), "pass_env": ("WANDB_Y",), "mounts": (BindMount("/h", "/c", False),),
    "gpus": GpuRequest(all=True), "shm_size": 2 * 1024**3, "ipc_mode": "shareable", "network": "none",
    "ulimits": (Ulimit("stack", 2, 2),), "devices": ("/dev/y",), "privileged": False, "cpus": 2.0,
    "memory": 3 * 1024**3, "init": False, "interactive": False, "tty": False,
}


def test_every_field_reaches_both_renderers() -> None:
    """One source of truth: a field that one renderer ignores would let plan and execution disagree."""
    environ = {"WANDB_X": "1", "WANDB_Y": "2"}
    assert set(CHANGED) == {f.name for f in dataclasses.fields(DockerRunArgs)}, "add the new field to CHANGED"
    for name, value in CHANGED.items():
        other = dataclasses.replace(FULL, **{name: value})
        assert render_cli(other) != render_cli(FULL), f"render_cli ignores {name}"
        assert to_sdk_kwargs(other, environ) != to_sdk_kwargs(FULL, environ), f"to_sdk_kwargs ignores {name}"


def test_secrets_reach_the_sdk_but_never_the_cli() -> None:
    argv = render_cli(FULL)
    assert "s3cret" not in " ".join(argv)
    assert argv[argv.index("API_TOKEN") - 1] == "--env"
    assert "API_TOKEN=s3cret" in to_sdk_kwargs(FULL, {})["environment"]
    assert "WANDB_X=1" in to_sdk_kwargs(FULL, {"WANDB_X": "1"})["environment"]
    assert not any(e.startswith("WANDB_X") for e in to_sdk_kwargs(FULL, {})["environment"])


@pytest.mark.parametrize(("gpus", "cli", "sdk"), [
    (GpuRequest(all=True), "all", {"count": -1, "device_ids": None}),
    (GpuRequest(count=2), "2", {"count": 2, "device_ids": None}),
    (GpuRequest(device_ids=("0", "3")), '"device=0,3"', {"count": 0, "device_ids": ["0", "3"]}),
])
def test_gpus(gpus: GpuRequest, cli: str, sdk: dict[str, object]) -> None:
    a = dataclasses.replace(FULL, gpus=gpus)
    argv = render_cli(a)
    assert argv[argv.index("--gpus") + 1] == cli
    req = to_sdk_kwargs(a, {})["device_requests"][0]
    assert {k: req[k] for k in sdk} == sdk
    assert req["capabilities"] == [["gpu"]]


def test_sdk_units_match_cli() -> None:
    kw = to_sdk_kwargs(FULL, {})
    argv = render_cli(FULL)
    assert kw["shm_size"] == 1024**3 and argv[argv.index("--shm-size") + 1] == "1g"
    assert kw["nano_cpus"] == 1_500_000_000 and argv[argv.index("--cpus") + 1] == "1.5"
    assert kw["mem_limit"] == 2 * 1024**3 and argv[argv.index("--memory") + 1] == "2g"
    assert kw["mounts"] == [{"Type": "bind", "Source": "/h", "Target": "/c", "ReadOnly": True}]
    assert "type=bind,source=/h,target=/c,readonly" in argv


def test_render_shell_is_one_option_a_line_and_round_trips() -> None:
    a = dataclasses.replace(FULL, gpus=GpuRequest(device_ids=("1",)), command=("sh", "-c", "echo 'hi there'; ls"))
    text = render_shell(render_cli(a))
    assert text.splitlines()[1].strip() == "--interactive \\"
    assert "    --gpus '\"device=1\"' \\" in text.splitlines()
    assert shlex.split(text.replace("\\\n", " ")) == render_cli(a)


def test_a_shell_without_a_terminal_keeps_stdin_and_asks_for_no_tty() -> None:
    """`echo CMD | runner shell dp3`: docker refuses -t when its input is not a terminal."""
    piped = dataclasses.replace(FULL, tty=False)
    argv = render_cli(piped)
    assert "--interactive" in argv and "--tty" not in argv and "--rm" in argv
    kw = to_sdk_kwargs(piped, {})
    assert (kw["stdin_open"], kw["tty"], kw["auto_remove"]) == (True, False, True)
    assert to_sdk_kwargs(FULL, {})["tty"] is True
