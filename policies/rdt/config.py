"""RDT job options: step fields with the defaults of RoboTwin's generated model_config and finetune.sh."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from policies.convert_options import ConvertCommon
from robot.options import Deploy
from runner.spec.models import JobCommon, StepsModel, StepSpec

CAMERA_SLOTS = ("cam_high", "cam_right_wrist", "cam_left_wrist")


class RdtConvert(ConvertCommon):
    cameras: dict[str, str] = Field(
        default_factory=lambda: {"cam_high": "front"},
        description="RDT camera slot -> recorded camera; slots left out are padded and masked")
    image_size: tuple[int, int] = (640, 480)

    @field_validator("cameras")
    @classmethod
    def _known_slots(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(CAMERA_SLOTS))
        if unknown:
            msg = f"unknown camera slot(s) {unknown}; RDT has {list(CAMERA_SLOTS)}"
            raise ValueError(msg)
        return v


class RdtTrain(StepSpec):
    stop_grace_s: float = Field(default=300.0, gt=0, le=3600, description="time to write a checkpoint on SIGTERM: "
                                "RDT-1B's fused checkpoint is ~22 GB (bf16 weights, fp32 masters, AdamW moments and "
                                "EMA); each checkpoint line says how long its write took")
    dataset: str | None = Field(default=None, description="folder under <converted>/rdt; default the newest")
    max_train_steps: int = Field(default=20000, gt=0)
    train_batch_size: int = Field(default=32, gt=0)
    sample_batch_size: int = Field(default=64, gt=0)
    checkpointing_period: int = Field(default=2500, gt=0)
    checkpoints_total_limit: int = Field(default=40, ge=1)
    learning_rate: float = Field(default=1.0e-4, gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    lr_warmup_steps: int = Field(default=500, ge=0)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    num_workers: int = Field(default=8, ge=0)
    state_noise_snr: float | None = 40.0
    image_aug: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    zero_stage: Literal[0, 1, 2, 3] = 2
    engine: Literal["auto", "fused", "accelerate"] = Field(
        default="auto", description="auto: the fused engine on GPUs in bf16 (bf16 weights, fp32 masters, fused AdamW, "
        "the model compiled, its optimizer state sharded on several GPUs: shard_optimizer; docs/rdt.md), accelerate "
        "+ DeepSpeed ZeRO (zero_stage) "
        "otherwise, or on GPUs too small for the whole optimizer state and a micro-batch (launch.fused_memory); "
        "accelerate: always accelerate, as upstream trains")
    shard_optimizer: bool = Field(default=True, description="fused engine on several GPUs: each GPU keeps 1/N of "
                                  "the fp32 masters, AdamW moments and EMA (ZeRO-1; 6 + 22/N bytes a parameter "
                                  "instead of 24), gradients reduce-scattered and weights all-gathered instead of "
                                  "DDP's all-reduce (1.90x on two H200s against DDP's 1.73x); checkpoints as "
                                  "unsharded, so they resume on any GPU count; false: DDP (docs/rdt.md, Engines)")
    compile: bool = Field(default=True, description="torch.compile the RDT model in the fused engine (GPU only; "
                          "SigLIP runs eager, faster on a training batch: docs/rdt.md)")
    precomp_lang_embed: bool = True
    img_history_size: int = Field(default=2, gt=0)
    image_side: int = Field(default=384, gt=0, description="SigLIP input side")
    model_size: Literal["1b", "tiny"] = Field(
        default="1b", description="1b: RDT-1B (weights.rdt loads into it); tiny: a small random model for tests")
    ctrl_freq: int = Field(default=25, gt=0, description="control frequency of the demonstrations, Hz")
    cond_mask_prob: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=1.0e-2, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = Field(default=1.0, gt=0)
    val_episodes: int = Field(default=1, ge=0, description="episodes held out of training for evaluation")
    device: str | None = None
    seed: int = 0
    logger: Literal["none", "tensorboard", "wandb"] = "tensorboard"
    log_every: int = Field(default=10, gt=0)

    def checkpoints_disk(self) -> tuple[int, int] | None:
        """The fused engine's checkpoint (bf16 weights, fp32 masters, two AdamW moments, fp32 EMA: 18 bytes a
        parameter, ~22 GB for RDT-1B), up to checkpoints_total_limit of them plus the one being written."""
        from policies.checkpoint_store import checkpoints_to_come
        from policies.rdt.launch import FUSED_CHECKPOINT_BYTES_PER_PARAM, MODEL_PARAMS

        written = checkpoints_to_come(0, self.max_train_steps, self.checkpointing_period)
        each = MODEL_PARAMS[self.model_size] * FUSED_CHECKPOINT_BYTES_PER_PARAM
        return each, min(written, self.checkpoints_total_limit + 1)

    def gpu_memory_fix(self, step: str) -> str:
        return (f"lower steps.{step}.train_batch_size (a GPU's batch) and raise gradient_accumulation_steps to keep "
                "the samples a step, or train on more GPUs (shard_optimizer splits the optimizer state across them); "
                f"engine: accelerate (DeepSpeed ZeRO-{self.zero_stage}) splits the gradients too")

    def loader_shm_bytes(self) -> int:
        # float32 images for every camera slot and history frame, 2 prefetched batches a worker.
        sample = len(CAMERA_SLOTS) * self.img_history_size * self.image_side**2 * 3 * 4
        return self.num_workers * 2 * self.train_batch_size * sample


class RdtEval(StepSpec):
    dataset: str | None = Field(default=None, description="folder under <converted>/rdt; default the newest")
    checkpoint: str = Field(default="latest", description="latest (of the newest training lineage), or a folder under "
                            "the checkpoints folder, e.g. <run id>/checkpoint-60")
    weights: Literal["ema", "model"] = "ema"
    episodes: int | None = Field(default=None, gt=0)
    stride: int | None = Field(default=None, gt=0, description="frames between predicted chunks; default the chunk")
    device: str | None = None
    seed: int = 0


class RdtSteps(StepsModel):
    convert: RdtConvert | None = None
    train: RdtTrain | None = None
    eval: RdtEval | None = None
    deploy: Deploy | None = None


class RdtJob(JobCommon):
    policy: Literal["rdt"]
    steps: RdtSteps = Field(default_factory=RdtSteps)

    @model_validator(mode="after")
    def _several_machines_need_gpus(self) -> RdtJob:
        r = self.resources
        if r.nodes > 1 and r.gpus in (0, []):
            # accelerate forms no process group for DeepSpeed on CPUs: each machine would train alone
            msg = (f"resources.nodes is {r.nodes} but resources.gpus is {r.gpus!r}: RDT trains on several machines "
                   "only with GPUs; on CPUs, set resources.nodes: 1")
            raise ValueError(msg)
        return self
