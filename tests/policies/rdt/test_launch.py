"""How RDT training is launched: one process a GPU, DeepSpeed when asked, a refusal before anything starts when
the job's GPUs are not visible, and the multi-machine arguments from the Slurm script's variables."""

from collections.abc import Callable
from pathlib import Path

import pytest

from policies.rdt.config import RdtTrain
from policies.rdt.launch import LaunchError, accelerate_argv, processes_per_machine

OPTS = RdtTrain(mixed_precision="bf16", zero_stage=2, gradient_accumulation_steps=4)
GIB = 1 << 30
SMALL, LARGE = 24 * GIB, 141 * GIB  # GPUs that cannot / can hold RDT-1B's whole optimizer state


def arg(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_one_process_a_gpu_with_deepspeed_on_gpus_too_small_for_the_fused_engine() -> None:
    argv = accelerate_argv("python3", OPTS, "all", 4, {}, port=29511, gpu_bytes=SMALL)
    assert argv[:3] == ["python3", "-m", "accelerate.commands.launch"]
    assert arg(argv, "--num_processes") == "4" and arg(argv, "--main_process_port") == "29511"
    assert "--use_deepspeed" in argv and arg(argv, "--zero_stage") == "2"
    assert arg(argv, "--gradient_accumulation_steps") == "4" and arg(argv, "--mixed_precision") == "bf16"
    assert argv[-3:] == ["-m", "policies.rdt.steps", "train"]


def test_several_large_gpus_run_the_fused_engine_with_ddp() -> None:
    argv = accelerate_argv("python3", OPTS, "all", 4, {}, port=1, gpu_bytes=LARGE)
    assert "--use_deepspeed" not in argv and "--multi_gpu" in argv and arg(argv, "--num_processes") == "4"
    forced = accelerate_argv("python3", OPTS.model_copy(update={"engine": "fused"}), 4, 4, {}, port=1, gpu_bytes=SMALL)
    assert "--use_deepspeed" not in forced  # asked for: it runs, and may run out of memory


def test_cpu_and_plain_ddp() -> None:
    cpu = accelerate_argv("python3", OPTS, 0, 0, {}, port=1)
    assert arg(cpu, "--num_processes") == "1" and arg(cpu, "--mixed_precision") == "no"  # bf16 only on GPUs
    ddp = accelerate_argv("python3", OPTS.model_copy(update={"zero_stage": 0}), [0, 1], 2, {}, port=1)
    assert "--use_deepspeed" not in ddp and "--multi_gpu" in ddp and arg(ddp, "--num_processes") == "2"


def test_gpus_that_are_not_visible_are_refused_before_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(LaunchError, match=r"asks for 4 \(4 GPU\(s\)\) but 1 are visible .*CUDA_VISIBLE_DEVICES='0'"):
        processes_per_machine(4, 1)
    assert processes_per_machine([2, 3], 2) == 2


def test_several_machines_take_the_rendezvous_from_the_environment() -> None:
    env = {"RUNNER_NUM_MACHINES": "2", "RUNNER_MACHINE_RANK": "1", "MASTER_ADDR": "node01", "MASTER_PORT": "23456"}
    argv = accelerate_argv("python3", OPTS, 4, 4, env, gpu_bytes=SMALL)
    assert arg(argv, "--num_machines") == "2" and arg(argv, "--machine_rank") == "1"
    assert arg(argv, "--num_processes") == "8"  # processes in total, as accelerate counts them
    assert arg(argv, "--main_process_ip") == "node01" and arg(argv, "--main_process_port") == "23456"
    # each node launches its own processes (srun starts one launch a node), not through pdsh/ssh
    assert arg(argv, "--deepspeed_multinode_launcher") == "standard"
    assert "--deepspeed_multinode_launcher" not in accelerate_argv("python3", OPTS, 4, 4, {}, port=1, gpu_bytes=SMALL)
    assert "--multi_gpu" in accelerate_argv("python3", OPTS, 4, 4, env, gpu_bytes=LARGE)  # the fused engine
    # accelerate forms no process group for DeepSpeed on CPUs: two machines would each train alone
    with pytest.raises(LaunchError, match=r"RDT on 2 machines needs GPUs \(resources.gpus is 0\)"):
        accelerate_argv("python3", OPTS, 0, 0, env)
    with pytest.raises(LaunchError, match="MASTER_ADDR and MASTER_PORT"):
        accelerate_argv("python3", OPTS, 4, 4, {"RUNNER_NUM_MACHINES": "2"})
    with pytest.raises(LaunchError, match=r"outside 0\.\.1"):
        accelerate_argv("python3", OPTS, 4, 4, {**env, "RUNNER_MACHINE_RANK": "2"})


def test_one_gpu_in_bf16_runs_the_fused_engine_without_deepspeed() -> None:
    one = accelerate_argv("python3", OPTS, 1, 1, {}, port=1)
    assert "--use_deepspeed" not in one and "--multi_gpu" not in one and arg(one, "--num_processes") == "1"
    upstream_way = accelerate_argv("python3", OPTS.model_copy(update={"engine": "accelerate"}), 1, 1, {}, port=1)
    assert "--use_deepspeed" in upstream_way and arg(upstream_way, "--zero_stage") == "2"
    fp32 = accelerate_argv("python3", OPTS.model_copy(update={"mixed_precision": "no"}), 1, 1, {}, port=1)
    assert "--use_deepspeed" in fp32  # the fused engine is bf16 only
    small = accelerate_argv("python3", OPTS, 1, 1, {}, port=1, gpu_bytes=SMALL)
    assert "--use_deepspeed" in small  # a 24 GB GPU cannot hold RDT-1B's fused state: upstream's way
    with pytest.raises(LaunchError, match=r"fused runs on GPUs in bf16; this run has 2 process\(es\) on GPUs and mixed_p"):
        accelerate_argv("python3", OPTS.model_copy(update={"engine": "fused", "mixed_precision": "no"}), 2, 2, {})


def test_an_rdt_job_on_several_machines_without_gpus_is_refused_by_name(write_job: Callable[..., Path]) -> None:
    from runner.errors import SpecError
    from runner.spec.load import load_job

    with pytest.raises(SpecError, match=r"resources\.nodes is 2 but resources\.gpus is 0: RDT trains on several"):
        load_job(write_job("name: r\npolicy: rdt\nresources: {nodes: 2}\n"), {})
    assert load_job(write_job("name: r\npolicy: rdt\nresources: {nodes: 2, gpus: 4}\n"), {}).spec.resources.nodes == 2
