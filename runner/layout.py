"""Where things are inside a step's container. One place, so plans, contexts and docs agree."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

CODE = PurePosixPath("/opt/robo-runner")  # this repo's code, mounted read-only
JOB = PurePosixPath("/job")  # runs/<job>/: run folders and checkpoints, read-write
RAW = PurePosixPath("/data/raw")
CONVERTED = PurePosixPath("/data/converted")
WEIGHTS = PurePosixPath("/weights")
THIRD_PARTY = PurePosixPath("/third_party")
CHECKPOINTS = "checkpoints"  # under the job folder, shared by the job's runs so resume finds them
#: Container paths the runner mounts itself: a job's mount may not cover, shadow or sit inside them.
RUNNER_TARGETS = (JOB, CODE, RAW, CONVERTED, WEIGHTS, THIRD_PARTY)
#: System folders a mount may sit inside (/etc/calib) but not replace or shadow.
SYSTEM_TARGETS = tuple(PurePosixPath(p) for p in ("/", "/bin", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys",
                                                   "/usr", "/tmp"))
HOME = "/tmp"  # the container user has no passwd entry; caches need a writable HOME
#: Under the job folder: torch.compile's inductor and Triton caches, kept across the job's runs and containers (a
#: container's /tmp starts empty, so every run compiled from scratch: ~100 s for RDT-1B, minutes for DP3 on DDP).
COMPILE_CACHE = ".compile-cache"
#: Seconds between SIGTERM and SIGKILL when a step is stopped: long enough to write a checkpoint.
STOP_GRACE_S = 30.0

#: Env names whose values are never printed, logged or recorded: a `_`-separated word of the name is one of
#: SECRET_WORDS, or ends with one of SECRET_ENDINGS (WANDB_APIKEY, HF_TOKEN, GITHUB_PAT, NCCL_PASSWD, DB_PASSWORD).
#: A job adds its own names with `secret_env: [NAME, ...]`.
SECRET_WORDS = frozenset({"PAT", "PASS", "PASSWD", "AUTH", "COOKIE", "CREDENTIAL", "CREDENTIALS", "PRIVATE",
                          "SESSION", "SIGNATURE"})
SECRET_ENDINGS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD")
#: Env prefixes passed through from the runner's environment to every step, by name.
PASSTHROUGH_PREFIXES = ("WANDB_", "HF_", "HUGGING_FACE_")

#: NVLink multicast can take a shared host's GPUs out of service; every process starts with it off.
NVLS_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def compile_cache_env(job_folder: PurePosixPath | str) -> dict[str, str]:
    """The variables that point torch.compile's caches into `job_folder`/.compile-cache."""
    root = f"{job_folder}/{COMPILE_CACHE}"
    return {"TORCHINDUCTOR_CACHE_DIR": f"{root}/inductor", "TRITON_CACHE_DIR": f"{root}/triton"}


def is_secret(name: str, extra: Iterable[str] = ()) -> bool:
    """True for env names whose values must not appear in plans, records or logs (`extra`: the job's secret_env)."""
    upper = name.upper()
    if upper in {e.upper() for e in extra}:
        return True
    words = [w for w in upper.split("_") if w]
    return any(w in SECRET_WORDS or w.endswith(SECRET_ENDINGS) for w in words)
