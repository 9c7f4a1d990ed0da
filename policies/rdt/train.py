"""RDT fine-tuning under `accelerate launch` (policies/rdt/launch.py starts it): DeepSpeed ZeRO (stage from the
job; a config rendered from its batch size, accumulation and precision) or plain DDP with stage 0; AdamW and the
diffusers LR schedule as upstream's finetune.sh; EMA as upstream (power 0.75, max 0.9999); frozen SigLIP; the
precomputed T5 embeddings. Checkpoints: checkpoint-<step>/ (accelerate's save_state: with DeepSpeed the model in
pytorch_model/mp_rank_00_model_states.pt under `module`, optimizer shards, RNG states; the LR scheduler; the EMA
as ema/model.safetensors; trainer_state.json and the resolved config; COMPLETE last).

Resume restores all of it or stops with an error: there is no silent weights-only fall-back. Batches and noise are
drawn from generators seeded by the step, so a resumed run continues exactly where the first one stopped.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies import checkpoint_io, interconnect
from policies.checkpoint_store import checkpoints_to_come
from policies.cuda_graph import compile_unavailable
from policies.data.episodes import read_attrs
from policies.metrics import Metrics, SmoothRate, progress
from policies.rdt import checkpoints, zero_convert
from policies.rdt.batches import ItemRules, StepIndices, TrainItems, collate
from policies.rdt.config import RdtTrain
from policies.rdt.dataset import EpisodeIndex, RdtSamples, dataset_stat, index_episodes
from policies.rdt.engine import (
    MODEL_FILE,
    AccelerateEngine,
    FusedEngine,
    ResumeError,
    check_same_engine,
    make_accelerator,
    world_size,
)
from policies.rdt.launch import fits_fused, fused_applies, fused_memory, gpu_memory, state_shards
from policies.rdt.model import RdtConfig, RdtRunner, schedulers
from policies.rdt.state_space import FRANKA, StateMap
from policies.rdt.weights import WeightsError, load_strict, read_state_dict
from policies.signals import StopFlag, ignore_stop_signals, stop_workers
from policies.training import (
    TrainResult,
    checkpoint_line,
    compile_note,
    disk_warning,
    lr_scheduler,
    tree_bytes,
)

TRAINER_STATE = "trainer_state.json"
RDT_CONFIG = "rdt_config.json"


@dataclass(frozen=True)
class Inputs:
    data: Path  # the converted RDT episodes (episode_*/episode_*.hdf5)
    siglip: Path
    output: Path  # checkpoint-<step>/ folders go here
    run_dir: Path
    pretrained: Path | None = None  # a local rdt-1b folder or file; None: random init (tiny models, tests)
    start: Path | None = None  # resume from this checkpoint-<step>/ (a branch), not the newest in `output`


def model_config(size: str, lang_dim: int, img_dim: int, patches: int, history: int, where: str) -> RdtConfig:
    """RDT-1B, or the tiny test model, with the condition dims of the encoders the job names."""
    img_len = history * 3 * patches
    if size == "1b":
        cfg = RdtConfig()
        if (lang_dim, img_dim) != (cfg.lang_token_dim, cfg.img_token_dim):
            msg = (f"model_size 1b takes T5-XXL embeddings (4096) and SigLIP so400m tokens (1152); {where} gives "
                   f"{lang_dim} and {img_dim}: use the released encoders, or model_size: tiny for small test encoders")
            raise ValueError(msg)
        return replace(cfg, img_cond_len=img_len)
    return replace(RdtConfig.tiny(), horizon=64, lang_token_dim=lang_dim, img_token_dim=img_dim,
                   max_lang_cond_len=1024, img_cond_len=img_len)


def split_episodes(root: Path, held_out: int) -> tuple[list[EpisodeIndex], list[EpisodeIndex]]:
    """(training, held-out): the last `held_out` episodes are kept for evaluation when more than one remains."""
    episodes = index_episodes(root)
    if held_out <= 0 or len(episodes) <= held_out:
        return episodes, []
    return episodes[:-held_out], episodes[-held_out:]


def _noise_seed(seed: int, micro: int, rank: int) -> int:
    return (seed * 1_000_003 + micro * 4099 + rank) % (2**63)


def train(o: RdtTrain, inputs: Inputs, *, resume: bool, stop: StopFlag, extra: dict[str, Any] | None = None,
          say: Callable[[str], None] = print, state_map: StateMap = FRANKA) -> TrainResult:
    """Fine-tune (or continue) as one process of `accelerate launch`; `o` holds the job's steps.train options."""
    from accelerate.utils import set_seed

    cuda = torch.cuda.is_available()
    gpu_bytes = gpu_memory()
    fused = fused_applies(o.engine, world_size(), cuda, o.mixed_precision if cuda else "no",
                          fits=fits_fused(o, gpu_bytes, world_size()))  # as launch.py decided
    acc, precision, ds_config = make_accelerator(o, fused)
    check_same_engine(acc, fused)
    main = acc.is_main_process
    if not main:
        say = _quiet
    if gpu_bytes is not None and not fused and o.engine == "auto" and precision == "bf16":
        n = acc.num_processes
        need = fused_memory(o.model_size, o.train_batch_size, state_shards(o, n))
        split = fused_memory(o.model_size, o.train_batch_size, n)
        hint = (f"; steps.train.shard_optimizer: true would split its state across the {n} GPUs ({split / 2**30:.0f} "
                "GiB a GPU)" if n > 1 and not o.shard_optimizer and split <= gpu_bytes else "")
        say(f"train: engine auto: a GPU has {gpu_bytes / 2**30:.0f} GiB, less than the fused engine needs for model_size "
            f"{o.model_size} at batch {o.train_batch_size} ({need / 2**30:.0f} GiB: docs/rdt.md, Engines); training with "
            f"accelerate + DeepSpeed instead{hint}")
    set_seed(o.seed)
    train_eps, val_eps = split_episodes(inputs.data, o.val_episodes)
    stat = dataset_stat(train_eps, state_map)
    if main:
        inputs.output.mkdir(parents=True, exist_ok=True)
        for folder in (inputs.run_dir, inputs.output):
            (folder / "dataset_stat.json").write_text(json.dumps(stat, indent=2))
        if ds_config is not None:
            (inputs.run_dir / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=2))
    tower, cfg, engine, empty_lang = _build(o, inputs, acc, precision, fused, resume, say)
    lr_sched = lr_scheduler(engine.optimizer, o.lr_scheduler, o.lr_warmup_steps, o.max_train_steps)
    acc.register_for_checkpointing(lr_sched)  # saved and restored with the rest of the state
    input_dtype = torch.bfloat16 if (fused or ds_config is not None) and precision == "bf16" else torch.float32
    expect = {"job": (extra or {}).get("job"), "model": asdict(cfg)}
    global_step = _resume(acc, engine, inputs, say, expect, o) if resume else 0
    acc.wait_for_everyone()
    meta = {"model": asdict(cfg), "train": o, "state_map": {"name": state_map.name, "indices": list(state_map.indices)},
            "siglip": str(inputs.siglip), "img_history_size": o.img_history_size, "ctrl_freq": o.ctrl_freq,
            "dataset": str(inputs.data), "val_episodes": [str(e.path) for e in val_eps],
            "train_episodes": [str(e.path) for e in train_eps], "dataset_stat": stat, "engine": engine.name,
            **_recorded(train_eps[0].path), **(extra or {})}
    if main:
        (inputs.output / RDT_CONFIG).write_text(json.dumps(meta, indent=2, default=str))
    loader = _loader(o, inputs, cfg, state_map, stat, train_eps, empty_lang, global_step, acc, cuda)
    say(f"train: RDT ({sum(p.numel() for p in engine.module.parameters()):,} parameters), "
        f"{len(train_eps)} training episodes, {len(val_eps)} held out, {acc.num_processes} process(es) on {acc.device}, "
        f"{_engine_words(engine, o, ds_config)}, precision {precision}, batch {o.train_batch_size} x "
        f"{o.gradient_accumulation_steps} accumulation x {acc.num_processes} processes, step {global_step}/"
        f"{o.max_train_steps}")
    interconnect.report(acc.device, say)
    if isinstance(engine, FusedEngine) and engine.compiled:
        say(compile_note("the first step compiles RDT's forward and backward"))

    def loss_fn(model: Any, b: dict[str, torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        return _loss(model, tower, b, alphas, cfg, input_dtype, gen)

    alphas = torch.as_tensor(schedulers(cfg)[0].alphas_cumprod, dtype=torch.float32).to(acc.device)  # type: ignore[attr-defined]
    loop = _Loop(o, inputs, acc, engine, lr_sched, meta, say, stop)
    return loop.run(global_step, iter(loader), loss_fn)


def _engine_words(engine: AccelerateEngine | FusedEngine, o: RdtTrain, ds_config: dict[str, Any] | None) -> str:
    if isinstance(engine, FusedEngine):
        sharded = f", state sharded across {engine.acc.num_processes} processes" if engine.sharded else ""
        return (f"fused engine (bf16 weights, fp32 masters, fused AdamW{', compiled' if engine.compiled else ''}"
                f"{sharded})")
    return f"DeepSpeed ZeRO-{o.zero_stage}" if ds_config is not None else "no DeepSpeed"


def _build(o: RdtTrain, inputs: Inputs, acc: Any, precision: str, fused: bool, resume: bool,
           say: Callable[[str], None]) -> tuple[Any, RdtConfig, AccelerateEngine | FusedEngine, torch.Tensor]:
    """SigLIP, the model (pretrained weights loaded unless resuming) and its engine."""
    from policies.rdt.vision import SiglipTower

    cuda = acc.device.type == "cuda"
    vision_dtype = torch.bfloat16 if cuda and precision == "bf16" else torch.float32
    # SigLIP is eager (SiglipTower): on 96 images eager bf16 (cuDNN attention, fused add + LayerNorm) runs 129.7 ms
    # against 158.6 ms compiled on an H200 (docs/rdt.md), and it costs no compile time; `compile` is the RDT model's
    tower = SiglipTower(inputs.siglip, acc.device, vision_dtype)
    empty_lang, lang_dim = _empty_language(inputs.data, o.model_size)
    cfg = model_config(o.model_size, lang_dim, tower.hidden_size, tower.num_patches, o.img_history_size,
                       f"{inputs.siglip} and the embeddings in {inputs.data}")
    model = RdtRunner(cfg)
    if inputs.pretrained is not None and not resume:
        load_strict(model, read_state_dict(inputs.pretrained), inputs.pretrained)
        say(f"train: loaded {inputs.pretrained}")
    if fused:
        reason = compile_unavailable() if o.compile else None
        if reason:
            say(f"train: not compiling RDT: {reason}")
        return tower, cfg, FusedEngine(acc, model, o, compile=o.compile and reason is None), empty_lang
    return tower, cfg, AccelerateEngine(acc, model, o, deepspeed=o.zero_stage > 0), empty_lang


def _loader(o: RdtTrain, inputs: Inputs, cfg: RdtConfig, state_map: StateMap, stat: dict[str, Any],
            train_eps: list[EpisodeIndex], empty_lang: torch.Tensor, global_step: int, acc: Any,
            cuda: bool) -> torch.utils.data.DataLoader[Any]:
    rules = ItemRules(seed=o.seed, ctrl_freq=o.ctrl_freq, cond_mask_prob=o.cond_mask_prob,
                      state_noise_snr=o.state_noise_snr, image_aug=o.image_aug)
    samples = RdtSamples(inputs.data, state_map, cfg.horizon, o.img_history_size, episodes=train_eps)
    items = TrainItems(samples, inputs.siglip, rules, np.asarray(stat["agilex"]["state_mean"], np.float32), empty_lang)
    accum, batch = o.gradient_accumulation_steps, o.train_batch_size
    return torch.utils.data.DataLoader(
        items, batch_size=batch, sampler=StepIndices(global_step * accum, batch, acc.process_index, acc.num_processes),
        num_workers=o.num_workers, collate_fn=collate, worker_init_fn=ignore_stop_signals,
        prefetch_factor=2 if o.num_workers else None, pin_memory=cuda)


class _Loop:
    """The optimizer steps: logging, checkpoints (periodic, last, on request, on stop) and stopping together."""

    def __init__(self, o: RdtTrain, inputs: Inputs, acc: Any, engine: AccelerateEngine | FusedEngine,
                 lr_sched: Any, meta: dict[str, Any], say: Callable[[str], None], stop: StopFlag) -> None:
        self.o, self.inputs, self.acc, self.engine, self.lr_sched = o, inputs, acc, engine, lr_sched
        self.meta, self.say, self.stop = meta, say, stop
        self.metrics = Metrics(inputs.run_dir, o.logger if acc.is_main_process else "none", meta,
                               enabled=acc.is_main_process, lineage=inputs.output,
                               title=f"RDT {meta.get('job', '')}: lineage {inputs.output.name}")
        self.result = TrainResult(0)
        self.disk_checked = False

    def save(self, step: int) -> Path:
        acc, main = self.acc, self.acc.is_main_process
        folder = checkpoints.checkpoint_dir(self.inputs.output, step)
        if main and folder.exists():  # an incomplete folder of the same step from an earlier, killed run
            shutil.rmtree(folder)
        acc.wait_for_everyone()
        self.engine.save(folder)  # with the EMA
        if main:
            (folder / TRAINER_STATE).write_text(json.dumps({"step": step, "ema_steps": self.engine.ema.steps}))
            checkpoints.mark_complete(folder, {**self.meta, "step": step})
            self.metrics.plot()
            for old in checkpoints.RdtStore(self.inputs.output).prune(self.o.checkpoints_total_limit):
                self.say(f"train: removed {old.name} (checkpoints_total_limit {self.o.checkpoints_total_limit})")
        acc.wait_for_everyone()
        self.result.last_checkpoint = folder
        return folder

    def run(self, global_step: int, batches: Any, loss_fn: Any) -> TrainResult:
        o, acc = self.o, self.acc
        accum, total = o.gradient_accumulation_steps, o.max_train_steps
        per_step = o.train_batch_size * accum * acc.num_processes
        t_log, n_log, smooth = time.perf_counter(), 0, SmoothRate()
        try:
            while global_step < total:
                micro = [({k: v.to(acc.device, non_blocking=True) for k, v in next(batches).items()},
                          torch.Generator(acc.device).manual_seed(_noise_seed(o.seed, global_step * accum + j,
                                                                              acc.process_index)))
                         for j in range(accum)]
                loss = self.engine.step(micro, loss_fn)
                self.lr_sched.step()
                global_step += 1
                n_log += per_step
                if global_step % o.log_every == 0 or global_step in (1, total):
                    rate = n_log / max(1e-9, time.perf_counter() - t_log)
                    self._log(global_step, float(acc.reduce(loss.detach().float(), "mean")), rate, smooth, per_step)
                    t_log, n_log = time.perf_counter(), 0
                stopping, saving = self._agreed_flags(global_step)
                if global_step % o.checkpointing_period == 0 or global_step == total or stopping or saving:
                    t_save = time.perf_counter()
                    folder = self.save(global_step)
                    size = tree_bytes(folder)
                    self.say(checkpoint_line(folder, size, time.perf_counter() - t_save))
                    if not (stopping or self.disk_checked):
                        self._check_disk(size, global_step)
                    self.stop.save_now = False
                if stopping:
                    self.result.stopped_by = self.stop.stopped_by
                    self.say(f"train: stopped ({self.result.stopped_by}) at step {global_step}; resume with "
                             "`runner resume JOB`")
                    break
        finally:
            stop_workers(batches)  # the loader never runs dry (its sampler is endless)
            self.metrics.close()
            self.engine.close()
            acc.end_training()
        self.result.global_step = global_step
        return self.result

    def _check_disk(self, size: int, step: int) -> None:
        """Once a run, after its first checkpoint (`size` bytes): whether the disk holds the ones still to come."""
        self.disk_checked = True
        if not self.acc.is_main_process:
            return
        o, lineage = self.o, self.inputs.output
        warning = disk_warning(lineage, size, o.checkpoints_total_limit,
                               len(checkpoints.RdtStore(lineage).entries()),
                               checkpoints_to_come(step, o.max_train_steps, o.checkpointing_period),
                               shutil.disk_usage(lineage).free)
        if warning:
            self.say(warning)

    def _agreed_flags(self, step: int) -> tuple[bool, bool]:
        """(stop, save now), the same on every process. One process reads its own flags, with no GPU round trip;
        several agree through a reduction at log steps only: reading its result makes the host wait for the GPU,
        and a wait every step would keep the host from queueing the next step while the GPU runs this one."""
        acc = self.acc
        local = (self.stop.signal is not None, self.stop.save_now)
        if acc.num_processes == 1:
            return local
        if step % self.o.log_every and step != self.o.max_train_steps:
            return False, False
        flags = torch.tensor(local, dtype=torch.float32, device=acc.device)
        stopping, saving = (bool(x) for x in acc.reduce(flags, "max").tolist())
        return stopping, saving

    def _log(self, step: int, value: float, rate: float, smooth: SmoothRate, per_step: int) -> None:
        self.result.losses.append(value)
        lr = float(self.lr_sched.get_last_lr()[0])
        self.metrics.log(step, {"loss": value, "lr": lr, "samples_per_s": rate})
        bar = progress(step, self.o.max_train_steps, smooth.update(rate), per_step)
        self.say(f"train: step {step}/{self.o.max_train_steps} {bar} loss {value:.5f} lr {lr:.2e} {rate:.1f} samples/s")


def _loss(model: Any, tower: Any, b: dict[str, torch.Tensor], alphas: torch.Tensor, cfg: RdtConfig,
          dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    images = b["images"]
    n, k = images.shape[:2]
    flat = images.reshape(n * k, *images.shape[2:])
    if "image_select" in b:  # the shown images and one background (batches.unique_images), not every background
        tokens = tower.encode(flat.index_select(0, b["image_select"])).index_select(0, b["image_source"])
    else:
        tokens = tower.encode(flat)
    img = tokens.reshape(n, -1, tower.hidden_size)
    actions = b["actions"].to(dtype)
    noise = torch.randn(actions.shape, generator=gen, device=actions.device, dtype=dtype)
    steps = torch.randint(0, cfg.num_train_timesteps, (n,), generator=gen, device=actions.device)
    loss: torch.Tensor = model(b["lang_embeds"].to(dtype), b["lang_attn_mask"], img.to(dtype), b["states"].to(dtype), actions,
                         b["state_elem_mask"][:, None].to(dtype), b["ctrl_freqs"].to(dtype), noise, steps, alphas)
    return loss


def _resume(acc: Any, engine: AccelerateEngine | FusedEngine, inputs: Inputs, say: Callable[[str], None],
            expect: dict[str, Any], o: RdtTrain) -> int:
    """Restore model, optimizer, scheduler, RNG and EMA from the newest complete checkpoint (or `inputs.start`,
    which is refused rather than skipped when it does not verify), or raise."""
    found = _resume_point(inputs, expect)
    if found is None:
        say(f"train: nothing to resume in {inputs.output}; starting from the pretrained weights")
        return 0
    step, folder = found
    saved_by = len(zero_convert.shards(folder))  # ZeRO writes one optimizer shard a data-parallel rank
    if saved_by and engine.name == "accelerate" and saved_by != acc.num_processes:
        need = fused_memory(o.model_size, o.train_batch_size) / 2**30
        msg = (f"{folder} was written by {saved_by} processes with DeepSpeed ZeRO, which cannot re-partition its "
               f"optimizer state for {acc.num_processes}: resume with resources.gpus={saved_by}, or with the fused "
               f"engine (engine: auto or fused, on GPUs of at least {need:.0f} GiB), which reads it on any GPU count, "
               f"or start a new lineage from its weights (weights.rdt={folder / MODEL_FILE} with `runner train JOB`)")
        raise ResumeError(msg)
    try:
        note = engine.load(folder)
        if note:
            say(f"train: {note}")
        state = json.loads((folder / TRAINER_STATE).read_text())
        engine.ema.load(folder / "ema", int(state["ema_steps"]))
    except (OSError, RuntimeError, KeyError, ValueError, WeightsError, checkpoint_io.CheckpointError) as e:
        msg = (f"cannot restore the full training state from {folder} ({type(e).__name__}: {e}). Training does not "
               "fall back to weights only: fix or move that folder away to resume from an earlier checkpoint, "
               "or train from scratch with `runner train JOB` (no --resume)")
        raise ResumeError(msg) from e
    if int(state["step"]) != step:
        msg = f"{folder}: {TRAINER_STATE} says step {state['step']}, the folder name says {step}"
        raise ResumeError(msg)
    say(f"train: resumed from {folder} at step {step} (optimizer, LR scheduler, RNG and EMA restored)")
    return step


def _resume_point(inputs: Inputs, expect: dict[str, Any]) -> tuple[int, Path] | None:
    if inputs.start is None:
        return checkpoints.RdtStore(inputs.output).latest(expect)
    why = checkpoints.verify(inputs.start, expect)
    if why:
        msg = f"cannot start from {inputs.start}: {why}"
        raise ResumeError(msg)
    m = re.match(r"^checkpoint-(\d+)$", inputs.start.name)
    if m is None:
        msg = f"{inputs.start}: not a checkpoint-<step> folder"
        raise ResumeError(msg)
    return int(m.group(1)), inputs.start


def _empty_language(data: Path, size: str) -> tuple[torch.Tensor, int]:
    """The empty instruction's embedding (dropped language) and the embedding width."""
    path = data / "empty_lang_embed.pt"
    if path.is_file():
        emb: torch.Tensor = torch.load(path, map_location="cpu", weights_only=True).float()
        return emb, int(emb.shape[-1])
    found = next(iter(sorted(data.glob("episode_*/instructions/lang_embed_*.pt"))), None)
    dim = int(torch.load(found, map_location="cpu", weights_only=True).shape[-1]) if found else (
        4096 if size == "1b" else 32)
    return torch.zeros(1, dim), dim


def _recorded(episode: Path) -> dict[str, Any]:
    """What the conversion recorded (camera, gripper binarisation, ...) and the camera slots: deploy rebuilds
    observations from these."""
    attrs = read_attrs(episode)
    return {"conversion": attrs.get("conversion", {}), "camera_slots": attrs.get("camera_slots", {})}


def _quiet(_message: str) -> None:
    """Ranks other than 0 print nothing: one log, not one a GPU."""
