"""Where things are inside a step's container. One place, so plans, contexts and docs agree."""

from __future__ import annotations

from pathlib import PurePosixPath

CODE = PurePosixPath("/opt/robo-runner")  # this repo's code, mounted read-only
JOB = PurePosixPath("/job")  # runs/<job>/: run folders and checkpoints, read-write
RAW = PurePosixPath("/data/raw")
CONVERTED = PurePosixPath("/data/converted")
WEIGHTS = PurePosixPath("/weights")
THIRD_PARTY = PurePosixPath("/third_party")
CHECKPOINTS = "checkpoints"  # under the job folder, shared by the job's runs so resume finds them
HOME = "/tmp"  # the container user has no passwd entry; caches need a writable HOME
#: Seconds between SIGTERM and SIGKILL when a step is stopped: long enough to write a checkpoint.
STOP_GRACE_S = 30.0

#: Env names whose values are never printed, logged or recorded.
SECRET_SUFFIXES = ("_TOKEN", "_KEY", "_SECRET", "_PASSWORD", "_PASS", "_CREDENTIALS")
#: Env prefixes passed through from the runner's environment to every step, by name.
PASSTHROUGH_PREFIXES = ("WANDB_", "HF_", "HUGGING_FACE_")

#: NVLink multicast can take a shared host's GPUs out of service; every process starts with it off.
NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def is_secret(name: str) -> bool:
    """True for env names whose values must not appear in plans, records or logs."""
    upper = name.upper()
    return upper.endswith(SECRET_SUFFIXES) or "PASSWORD" in upper or upper == "WANDB_API_KEY"
