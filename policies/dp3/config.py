"""DP3 job options: the step fields a DP3 job may set, with RoboTwin's robot_dp3.yaml defaults."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from policies.convert_options import CloudOptions, ConvertCommon
from robot.options import Deploy
from runner.spec.models import JobCommon, StepsModel, StepSpec, default_of

# Bytes of one float32 point with xyz + rgb.
_POINT_BYTES = 6 * 4


class Dp3Convert(ConvertCommon, CloudOptions):
    pass


class Dp3Train(StepSpec):
    """DP3's training options: the job's `steps.train`, and the settings policies.dp3.train.train takes (tests and
    benches build one directly: `Dp3Train(epochs=..., batch_size=...)`). The network's own defaults (horizon,
    down_dims, ...) are declared here too; policies.dp3.model.Dp3Config takes them from this class."""

    epochs: int = Field(default=3000, gt=0)
    batch_size: int = Field(default=256, gt=0)
    lr: float = Field(default=1.0e-4, gt=0)
    betas: tuple[float, float] = Field(default=(0.95, 0.999), description="AdamW's betas (upstream's)")
    weight_decay: float = Field(default=1.0e-6, ge=0)
    lr_warmup_steps: int = Field(default=500, ge=0)
    checkpoint_every: int = Field(default=3000, gt=0, description="epochs between checkpoints")
    keep_checkpoints: int = Field(default=3, ge=1)
    seed: int = 0
    horizon: int = Field(default=8, gt=0)
    n_obs_steps: int = Field(default=3, gt=0)
    n_action_steps: int = Field(default=6, gt=0)
    use_pc_color: bool = False
    val_ratio: float = Field(default=0.02, ge=0, lt=1)
    state_dim: int | None = Field(default=None, gt=0, description="pin only to assert; read from the data")
    action_dim: int | None = Field(default=None, gt=0)
    num_points: int = Field(default=default_of(CloudOptions, "num_points"), gt=0)
    down_dims: tuple[int, ...] = (512, 1024, 2048)
    logger: Literal["none", "tensorboard", "wandb"] = "none"
    max_steps: int | None = Field(default=None, gt=0, description="stop after this many optimizer steps")
    val_every: int = Field(default=50, gt=0, description="epochs between validation losses")
    log_every: int = Field(default=10, gt=0, description="optimizer steps between logged losses")
    grad_clip: float = Field(default=1.0, ge=0, description="max gradient norm; 0 turns clipping off")
    ema: bool = True
    dataset: str | None = Field(default=None, description="replay buffer name; default <task>-<config>-<n>.zarr")
    config: str = Field(default="demo_clean", description="task_config the buffer was converted with")
    device: str | None = Field(default=None, description="cuda / cpu; default cuda when there is one")
    cuda_graph: bool = Field(default=True, description="GPUs: replay the whole optimizer step (with its all-reduces "
                             "on several GPUs) as one CUDA graph")
    compile: bool = Field(default=True, description="GPUs: torch.compile the training step before capturing it "
                          "(2-4 minutes at start; without a C compiler it is skipped with a message)")
    shard_optimizer: bool = Field(default=True, description="several GPUs with cuda_graph: ZeRO-1, each GPU "
                                  "updates 1/N of the weights and EMA (reduce-scatter + all-gather); false: DDP")
    grad_reduce: Literal["bf16", "fp32"] = Field(
        default="bf16", description="with shard_optimizer: the dtype gradients are summed across GPUs in; bf16 "
        "halves the reduce-scatter (the matmul weight gradients are bf16 under autocast already), fp32 is exact")
    weight_gather: Literal["bf16", "fp32"] = Field(
        default="fp32", description="with shard_optimizer: the dtype the updated weights are all-gathered in; bf16 "
        "halves the all-gather and trains exactly as fp32 does (under autocast DP3 reads every trained weight as bf16; "
        "each GPU keeps its own slice in fp32, and validation and checkpoints gather fp32 first), but on two H200s it "
        "was no faster (its copies cost what it saves) and held 0.5 GiB more (docs/dp3.md)")

    def settings(self) -> dict[str, Any]:
        """The training settings a checkpoint records: every option but the container's (env, shm, ...)."""
        return self.model_dump(mode="json", exclude=set(StepSpec.model_fields))

    def gpu_memory_fix(self, step: str) -> str:
        return (f"lower steps.{step}.batch_size, or train on more GPUs (resources.gpus): the batch is split across "
                "them")

    def loader_shm_bytes(self) -> int:
        # Each worker keeps prefetch_factor (2) collated batches in shared memory.
        sample = self.horizon * (self.num_points * _POINT_BYTES + 2 * 32 * 4)
        return self.num_workers * 2 * self.batch_size * sample


class Dp3Eval(StepSpec):
    checkpoint: str = Field(default="latest", description="latest or best (of the newest training lineage), or a path "
                            "under the checkpoints folder, e.g. <run id>/step-40.ckpt")
    episodes: int | None = Field(default=None, gt=0, description="held-out episodes to evaluate")


class Dp3Steps(StepsModel):
    convert: Dp3Convert | None = None
    train: Dp3Train | None = None
    eval: Dp3Eval | None = None
    deploy: Deploy | None = None


class Dp3Job(JobCommon):
    policy: Literal["dp3"]
    steps: Dp3Steps = Field(default_factory=Dp3Steps)
