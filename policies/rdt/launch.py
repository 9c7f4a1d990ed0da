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

from policies.checkpoint_store import human_bytes
from policies.rdt.config import RdtTrain
from runner.spec.models import StepSpec

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


#: Bytes each parameter takes on every GPU in the fused engine: the bf16 weight and gradient, the fp32 master and
#: its gradient copy, AdamW's two fp32 moments and the fp32 EMA. ZeRO-2 splits all but the first two across GPUs.
FUSED_BYTES_PER_PARAM = 2 + 2 + 4 + 4 + 8 + 4
#: Parameters of each model size (RDT-1B: 1,228,319,872 with SigLIP so400m's token width).
MODEL_PARAMS = {"1b": 1_228_319_872, "tiny": 2_000_000}
#: A fused checkpoint, bytes a parameter: bf16 weight, fp32 master, AdamW's two fp32 moments, fp32 EMA.
FUSED_CHECKPOINT_BYTES_PER_PARAM = 2 + 4 + 8 + 4
#: Activations, SigLIP and workspace a sample of the micro-batch (RDT-1B on one H200, bf16, bench/rdt.py: peak
#: 41.4 GiB at batch 16 and 56.6 GiB at 32 over the 27.4 GiB of state above).
ACTIVATION_BYTES_PER_SAMPLE = {"1b": 1 << 30, "tiny": 16 << 20}


#: shard_optimizer on N GPUs (policies/rdt/sharded.py): bytes a parameter every GPU keeps whole (bf16 weight,
#: gradient and the flat buffer), and those split N ways (fp32 master, its gradient, two moments, EMA, a bf16 slice).
SHARDED_WHOLE_BYTES, SHARDED_SPLIT_BYTES = 2 + 2 + 2, 4 + 4 + 8 + 4 + 2


def fused_memory(model_size: str, micro_batch: int, shards: int = 1) -> int:
    """What one GPU needs for the fused engine (bytes), by the constants above; `shards`: processes the optimizer
    state is split across (shard_optimizer)."""
    per_param = (FUSED_BYTES_PER_PARAM if shards <= 1
                 else SHARDED_WHOLE_BYTES + SHARDED_SPLIT_BYTES / shards)
    return int(MODEL_PARAMS[model_size] * per_param) + micro_batch * ACTIVATION_BYTES_PER_SAMPLE[model_size]


def state_shards(options: RdtTrain, processes: int) -> int:
    """Processes the fused engine's optimizer state is split across: all of them with shard_optimizer, else 1."""
    return processes if options.shard_optimizer and processes > 1 else 1


def gpu_memory() -> int | None:
    """The first visible GPU's memory in bytes, or None without one."""
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else None


def _fused(options: RdtTrain, processes: int, visible: int, gpu_bytes: int | None = None) -> bool:
    """Whether the step trains with the fused engine (then accelerate starts it without DeepSpeed)."""
    try:
        return fused_applies(options.engine, processes, visible > 0, options.mixed_precision if visible else "no",
                             fits=fits_fused(options, gpu_bytes, processes))
    except ValueError as e:
        raise LaunchError(str(e)) from e


def fits_fused(options: RdtTrain, gpu_bytes: int | None, processes: int = 1) -> bool:
    """Whether a GPU of `gpu_bytes` holds the fused engine's optimizer state (whole, or its slice with
    shard_optimizer over `processes`) and a micro-batch (unknown: assumed to)."""
    need = fused_memory(options.model_size, options.train_batch_size, state_shards(options, processes))
    return gpu_bytes is None or need <= gpu_bytes


def fused_applies(engine: str, processes: int, cuda: bool, precision: str, fits: bool = True) -> bool:
    """Whether the fused engine runs: `fused`, or `auto` on GPUs in bf16 that each hold its whole optimizer state
    and a micro-batch (`fits`; else accelerate's DeepSpeed ZeRO, which splits the state across several GPUs and, on
    one, peaks ~4 GiB lower at batch 16). Raises when `fused` cannot run. `processes`: for the message."""
    able = cuda and precision == "bf16"
    if engine == "fused" and not able:
        msg = (f"engine: fused runs on GPUs in bf16; this run has {processes} process(es) on "
               f"{'GPUs' if cuda else 'no GPU'} and mixed_precision {precision}: use engine: auto or accelerate")
        raise ValueError(msg)
    if engine == "accelerate" or not able:
        return False
    return engine == "fused" or fits


def render_deepspeed_config(*, zero_stage: int, mixed_precision: str, grad_accum: int, micro_batch: int,
                            max_grad_norm: float = 1.0) -> dict[str, Any]:
    """configs/zero2.json as upstream writes it, with the batch sizes filled in from the job (not "auto"), and the
    job's gradient clipping (upstream's zero2.json has none, so its clip_grad_norm_ call does nothing under DeepSpeed)."""
    return {
        "bf16": {"enabled": mixed_precision == "bf16"},
        "fp16": {"enabled": mixed_precision == "fp16"},
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "zero_optimization": {"stage": zero_stage, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_scatter": True, "allgather_partitions": True},
        "gradient_clipping": max_grad_norm,
        "steps_per_print": 10**9,
    }


def deepspeed_config(options: RdtTrain, precision: str) -> dict[str, Any]:
    """The job's steps.train options as render_deepspeed_config takes them (`precision`: as the run resolves it)."""
    return render_deepspeed_config(zero_stage=options.zero_stage, mixed_precision=precision,
                                   grad_accum=options.gradient_accumulation_steps,
                                   micro_batch=options.train_batch_size, max_grad_norm=options.max_grad_norm)


def preview(step: str, options: StepSpec, gpus: Any, nodes: int) -> dict[str, Any] | None:
    """What `runner plan` shows of the training launch inside the step: the `accelerate launch` line (node 0's
    with several nodes) and the DeepSpeed config it renders, or None for the other steps. `gpus: all` counts one
    GPU here (the count is only known where the step runs)."""
    if step != "train" or not isinstance(options, RdtTrain):
        return None
    visible = 1 if gpus == "all" else (len(gpus) if isinstance(gpus, list) else int(gpus))
    env = {"RUNNER_NUM_MACHINES": str(nodes), "RUNNER_MACHINE_RANK": "0", "MASTER_ADDR": "$MASTER_ADDR",
           "MASTER_PORT": "$MASTER_PORT"} if nodes > 1 else {}
    argv = accelerate_argv("python3", options, gpus, visible, env, port=0)
    if nodes == 1:
        argv[argv.index("--main_process_port") + 1] = "<a free port>"
    processes = processes_per_machine(gpus, visible) * nodes
    fused = _fused(options, processes, visible)  # the GPUs' memory is known where the step runs
    out: dict[str, Any] = {"launch": argv, "engine": "fused" if fused else "accelerate"}
    shards = state_shards(options, processes)
    need = f"{fused_memory(options.model_size, options.train_batch_size, shards) / (1 << 30):.0f} GiB"
    state = f"1/{shards} of the optimizer state" if shards > 1 else "the whole optimizer state"
    several = "its optimizer state split across the GPUs (shard_optimizer)" if options.shard_optimizer else "DDP"
    if gpus == "all":
        if options.shard_optimizer:
            n_gib = [f"{fused_memory(options.model_size, options.train_batch_size, n) / (1 << 30):.0f} GiB on {n}"
                     for n in (2, 4, 8)]
            needs = f"{', '.join(n_gib)} GPUs: 1/N of the optimizer state and a micro-batch"
        else:
            needs = (f"{need}: the whole optimizer state and a micro-batch; shard_optimizer: true splits most of the "
                     "state across the GPUs")
        out["note"] = ("resources.gpus is all: shown for one GPU; with several the step launches one process a GPU: "
                       f"the fused engine with {several}, or DeepSpeed ZeRO-{options.zero_stage} where a GPU has "
                       f"less than it needs ({needs}: docs/rdt.md, Engines)")
    elif fused and options.engine == "auto":
        out["note"] = (f"fused engine{f' with {several}' if processes > 1 else ''}; the step switches to DeepSpeed "
                       f"ZeRO-{options.zero_stage} instead where a GPU has less than {need} ({state} and a "
                       "micro-batch)")
    if not fused and options.zero_stage > 0 and visible:
        out["deepspeed_config.json"] = deepspeed_config(options, options.mixed_precision)
    disk = options.checkpoints_disk()
    if disk is not None:
        each, kept = disk
        out["checkpoints"] = (f"~{human_bytes(each)} each, up to {kept} at once: {human_bytes(each * kept)} on the "
                              "runs folder's disk (checkpoints_total_limit, checkpointing_period)")
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def accelerate_argv(python: str, options: RdtTrain, gpus: Any, visible: int, env: Mapping[str, str],
                    port: int | None = None, gpu_bytes: int | None = None) -> list[str]:
    """The `accelerate launch` command line for this machine (pure apart from the port when none is given);
    `gpu_bytes`: a GPU's memory, which decides between the fused engine and ZeRO (fits_fused)."""
    per_machine = processes_per_machine(gpus, visible)
    machines = int(env.get("RUNNER_NUM_MACHINES", "1"))
    rank = int(env.get("RUNNER_MACHINE_RANK", "0"))
    if not 0 <= rank < machines:
        msg = f"RUNNER_MACHINE_RANK={rank} is outside 0..{machines - 1} (RUNNER_NUM_MACHINES={machines})"
        raise LaunchError(msg)
    if machines > 1 and not visible:
        # accelerate forms no process group for a DeepSpeed run on CPUs: each node would train alone, both writing
        # the same checkpoints. Several machines are for GPUs.
        msg = (f"RDT on {machines} machines needs GPUs (resources.gpus is {gpus!r}): on CPUs it trains on one "
               "machine, one process (resources.nodes: 1)")
        raise LaunchError(msg)
    precision = options.mixed_precision if visible else "no"
    argv = [python, "-m", "accelerate.commands.launch", "--num_machines", str(machines), "--machine_rank", str(rank),
            "--num_processes", str(per_machine * machines), "--mixed_precision", precision, "--dynamo_backend", "no"]
    if machines > 1:
        if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
            msg = "a multi-machine launch needs MASTER_ADDR and MASTER_PORT (the sbatch script sets them)"
            raise LaunchError(msg)
        argv += ["--main_process_ip", env["MASTER_ADDR"], "--main_process_port", env["MASTER_PORT"]]
    else:
        argv += ["--main_process_port", str(port if port is not None else free_port())]
    if options.zero_stage > 0 and not _fused(options, per_machine * machines, visible, gpu_bytes):
        argv += ["--use_deepspeed", "--zero_stage", str(options.zero_stage),
                 "--gradient_accumulation_steps", str(options.gradient_accumulation_steps)]
        if machines > 1:
            # Each node runs its own launch (srun starts one a node): torchrun's per-node launch, not accelerate's
            # default pdsh launcher, which would ssh to the others through the `deepspeed` command.
            argv += ["--deepspeed_multinode_launcher", "standard"]
    elif per_machine * machines > 1:
        argv += ["--multi_gpu"]
    return [*argv, "-m", "policies.rdt.steps", "train"]
