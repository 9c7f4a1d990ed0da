import pytest

from runner.diagnose import FailureFacts, classify

GIB = 1024**3


def facts(tail: str, code: int = 1, **kw: object) -> FailureFacts:
    return FailureFacts(step="train", exit_code=code, oom_killed=bool(kw.pop("oom", False)), log_tail=tail, **kw)  # type: ignore[arg-type]


def test_shm_bus_error_suggests_the_size_that_would_have_been_needed() -> None:
    d = classify(facts("ERROR: Unexpected bus error encountered in worker. This might be caused by insufficient "
                       "shared memory (shm).", shm_size=64 * 1024**2, shm_needed=6 * GIB, num_workers=8))
    assert d and d.kind == "shm"
    assert "steps.train.shm: 8g" in d.fix and "num_workers: 0" in d.fix


@pytest.mark.parametrize(("tail", "code", "kind"), [
    ("bootstrap.cc:45 NCCL WARN Bootstrap : no socket interface found", 1, "nccl_interface"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 1, "cuda_oom"),
    ("Killed", 137, "host_oom"),
    ("RuntimeError: mat1 and mat2 shapes cannot be multiplied (768x8 and 14x64)", 1, "shape_mismatch"),
    ("FileNotFoundError: [Errno 2] No such file or directory: '/data/converted/x.zarr'", 1, "missing_file"),
    ("FileNotFoundError: [Errno 2] No such file or directory: 'deepspeed'", 1, "command_not_found"),  # a launcher's
    ("NCCL WARN socket connect to 10.0.0.2<29500> failed: Connection refused", 1, "nccl_connect"),
    ("sh: 1: trainx: not found", 127, "command_not_found"),
    ("", 143, "interrupted"),
])
def test_known_failures(tail: str, code: int, kind: str) -> None:
    d = classify(facts(tail, code, nccl_ifname="eth0", interfaces=("lo", "enp5s0")))
    assert d is not None and d.kind == kind
    assert d.fix


def test_shape_mismatch_quotes_the_shapes_and_oom_flag_wins() -> None:
    d = classify(facts("mat1 and mat2 shapes cannot be multiplied (768x8 and 14x64)"))
    assert d and "(768x8 and 14x64)" in d.cause
    assert (classify(facts("whatever", 1, oom=True)) or d).kind == "host_oom"


def test_unknown_failure_is_not_guessed() -> None:
    assert classify(facts("ValueError: something new", 1)) is None


def test_a_deploy_safety_stop_is_named_in_the_record() -> None:
    from runner.diagnose import FailureFacts, classify

    tail = "deploy: x\ndeploy: stopped: robot: non-finite joint reading joint 3 (nan)\ndeploy: 40 control steps"
    d = classify(FailureFacts(step="deploy", exit_code=1, oom_killed=False, log_tail=tail))
    assert d is not None and d.kind == "deploy_safety_stop" and "joint 3 (nan)" in d.cause


def test_a_gpu_out_of_memory_names_the_policy_s_own_options() -> None:
    from policies.dp3.config import Dp3Train
    from policies.rdt.config import RdtTrain

    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    rdt = classify(facts(oom, gpu_memory_fix=RdtTrain().gpu_memory_fix("train")))
    assert rdt and rdt.kind == "cuda_oom"
    assert "steps.train.train_batch_size" in rdt.fix and "gradient_accumulation_steps" in rdt.fix
    assert "DeepSpeed ZeRO-2" in rdt.fix
    dp3 = classify(facts(oom, gpu_memory_fix=Dp3Train().gpu_memory_fix("train")))
    assert dp3 and "steps.train.batch_size" in dp3.fix and "accumulation" not in dp3.fix  # DP3 has none
    plain = classify(facts(oom))
    assert plain and plain.fix == "lower the batch size of steps.train, or give it more GPUs"
