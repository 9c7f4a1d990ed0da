"""How `runner train` starts RDT fine-tuning: `accelerate launch` with one process a GPU, DeepSpeed when the job's
zero_stage is above 0, a free --main_process_port, and a check, before anything starts, that the GPUs the job asks
for are visible. Across machines (Slurm, templates/sbatch.j2) the machine count, this machine's rank and the
main process address come from RUNNER_NUM_MACHINES / RUNNER_MACHINE_RANK / MASTER_ADDR / MASTER_PORT.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

#: Set in the launched processes: the step runs the training loop instead of launching again.
LAUNCHED = "RUNNER_RDT_LAUNCHED"


class LaunchError(Exception):
    """The launch cannot work (GPUs not visible, bad multi-node settings); nothing was started."""


def processes_per_machine(gpus: Any, visible: int) -> int:
    """One process a GPU; one CPU process with no GPU. Fails when the job asks for GPUs that are not visible."""
    if gpus == 0 or (gpus == "all" and visible == 0):
        return 1
    if gpus == "all":
        return visible
    wanted = len(gpus) if isinstance(gpus, list) else int(gpus)
    if visible < wanted:
        where = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f"CUDA_VISIBLE_DEVICES={where!r}" if where is not None else "no CUDA_VISIBLE_DEVICES set"
        msg = (f"resources.gpus asks for {gpus} ({wanted} GPU(s)) but {visible} are visible to this process ({seen}); "
               "check `nvidia-smi`, the docker NVIDIA runtime, or lower resources.gpus")
        raise LaunchError(msg)
    return wanted


def _fused(options: Mapping[str, Any], processes: int, visible: int) -> bool:
    """Whether the step trains with the fused one-GPU engine (then accelerate starts it without DeepSpeed)."""
    from policies.rdt.engine import fused_applies

    try:
        return fused_applies(options.get("engine", "auto"), processes, visible > 0,
                             options["mixed_precision"] if visible else "no")
    except ValueError as e:
        raise LaunchError(str(e)) from e


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def accelerate_argv(python: str, options: Mapping[str, Any], gpus: Any, visible: int, env: Mapping[str, str],
                    port: int | None = None) -> list[str]:
    """The `accelerate launch` command line for this machine (pure apart from the port when none is given)."""
    per_machine = processes_per_machine(gpus, visible)
    machines = int(env.get("RUNNER_NUM_MACHINES", "1"))
    rank = int(env.get("RUNNER_MACHINE_RANK", "0"))
    if not 0 <= rank < machines:
        msg = f"RUNNER_MACHINE_RANK={rank} is outside 0..{machines - 1} (RUNNER_NUM_MACHINES={machines})"
        raise LaunchError(msg)
    precision = options["mixed_precision"] if visible else "no"
    argv = [python, "-m", "accelerate.commands.launch", "--num_machines", str(machines), "--machine_rank", str(rank),
            "--num_processes", str(per_machine * machines), "--mixed_precision", precision, "--dynamo_backend", "no"]
    if machines > 1:
        if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
            msg = "a multi-machine launch needs MASTER_ADDR and MASTER_PORT (the sbatch script sets them)"
            raise LaunchError(msg)
        argv += ["--main_process_ip", env["MASTER_ADDR"], "--main_process_port", env["MASTER_PORT"]]
    else:
        argv += ["--main_process_port", str(port if port is not None else free_port())]
    if options["zero_stage"] > 0 and not _fused(options, per_machine * machines, visible):
        argv += ["--use_deepspeed", "--zero_stage", str(options["zero_stage"]),
                 "--gradient_accumulation_steps", str(options["gradient_accumulation_steps"])]
    elif per_machine * machines > 1:
        argv += ["--multi_gpu"]
    return [*argv, "-m", "policies.rdt.steps", "train"]
