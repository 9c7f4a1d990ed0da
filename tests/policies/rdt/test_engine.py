"""The fused engine against the arithmetic upstream trains with: the same losses from the same seed within bf16
tolerance, its checkpoint restoring the next step exactly, DDP over two processes (gloo) against one process
accumulating the same two halves, a two-process checkpoint resumed by one process, and the refusals between
engines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from policies import checkpoint_io
from policies.rdt.config import RdtTrain
from policies.rdt.engine import (
    FUSED_OPTIMIZER,
    MODEL_FILE,
    AccelerateEngine,
    FusedEngine,
    ResumeError,
    check_same_engine,
    make_accelerator,
)
from policies.rdt.launch import fits_fused, free_port, fused_applies, fused_memory
from policies.rdt.model import RdtConfig, RdtRunner, schedulers
from policies.rdt.train import _loss
from tests.policies.process_groups import then_leave

CFG = RdtConfig(hidden_size=64, depth=2, num_heads=4, horizon=8, lang_token_dim=32, img_token_dim=16,
                max_lang_cond_len=16, img_cond_len=2 * 4)


class Tokens:
    """A stand-in image tower: fixed tokens per image index (the engines, not SigLIP, are under test)."""

    hidden_size = 16

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :64].reshape(-1, 4, 16)


def batches(steps: int, n: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"images": torch.randn(n, 2, 3, 8, 8, generator=g), "lang_embeds": torch.randn(n, 5, 32, generator=g),
             "lang_attn_mask": torch.ones(n, 5, dtype=torch.bool), "states": torch.randn(n, 1, 128, generator=g),
             "actions": torch.randn(n, CFG.horizon, 128, generator=g), "state_elem_mask": torch.ones(n, 128),
             "ctrl_freqs": torch.full((n,), 25.0)} for _ in range(steps)]


def opts(**over: Any) -> RdtTrain:
    return RdtTrain.model_validate({"learning_rate": 1e-3, "zero_stage": 0, **over})


def run(engine: Any, data: list[dict[str, torch.Tensor]], dtype: torch.dtype, start: int = 0) -> list[float]:
    alphas = torch.as_tensor(schedulers(CFG)[0].alphas_cumprod, dtype=torch.float32)  # type: ignore[attr-defined]
    losses = []
    for i, b in enumerate(data):
        gen = torch.Generator().manual_seed(start + i)
        loss = engine.step([(b, gen)], lambda m, bb, g: _loss(m, Tokens(), bb, alphas, CFG, dtype, g))
        losses.append(float(loss.detach()))
    return losses


def model() -> RdtRunner:
    torch.manual_seed(0)
    return RdtRunner(CFG)


def test_fused_losses_follow_the_fp32_reference_within_bf16_tolerance() -> None:
    data = batches(8)
    acc, _, _ = make_accelerator(opts(), fused=False)
    ref = run(AccelerateEngine(acc, model(), opts(), deepspeed=False), data, torch.float32)
    fused_acc, _, _ = make_accelerator(opts(), fused=True)
    fused = run(FusedEngine(fused_acc, model(), opts(), compile=False), data, torch.bfloat16)
    assert ref[0] == pytest.approx(fused[0], rel=2e-2)  # the same weights, rounded to bf16
    assert fused == pytest.approx(ref, rel=5e-2)
    assert ref[-1] < ref[0] and fused[-1] < fused[0]  # both learn


def test_fused_checkpoint_restores_the_next_step_exactly(tmp_path: Path) -> None:
    data = batches(6)
    acc, _, _ = make_accelerator(opts(), fused=True)
    whole = run(FusedEngine(acc, model(), opts(), compile=False), data, torch.bfloat16)
    first = FusedEngine(acc, model(), opts(), compile=False)
    run(first, data[:3], torch.bfloat16)
    first.save(tmp_path / "checkpoint-3")
    assert (tmp_path / "checkpoint-3" / MODEL_FILE).is_file()
    second = FusedEngine(acc, model(), opts(), compile=False)
    second.load(tmp_path / "checkpoint-3")
    assert run(second, data[3:], torch.bfloat16, start=3) == whole[3:]
    with pytest.raises(ResumeError, match="written by the fused engine"):
        AccelerateEngine(acc, model(), opts(), deepspeed=False).load(tmp_path / "checkpoint-3")
    (tmp_path / "other").mkdir()
    with pytest.raises(ResumeError, match=r"accelerate without DeepSpeed .*, not the fused engine: resume it with engine"):
        second.load(tmp_path / "other")


def test_which_engine_runs() -> None:
    assert fused_applies("auto", 1, True, "bf16") and fused_applies("auto", 2, True, "bf16")
    assert not fused_applies("auto", 1, False, "no") and not fused_applies("auto", 2, True, "fp16")
    assert not fused_applies("accelerate", 1, True, "bf16")
    # GPUs too small for the whole optimizer state and a micro-batch: ZeRO (which splits it on several GPUs)
    assert not fused_applies("auto", 4, True, "bf16", fits=False) and not fused_applies("auto", 1, True, "bf16", fits=False)
    assert fused_applies("fused", 4, True, "bf16", fits=False)  # asked for by name: it runs
    with pytest.raises(ValueError, match=r"engine: fused runs on GPUs in bf16; this run has 1 process\(es\) on no GPU"):
        fused_applies("fused", 1, False, "no")


def test_the_fused_engine_fits_rdt_1b_on_80_gb_gpus_and_not_on_24_gb_ones() -> None:
    gib = 1 << 30
    rdt_1b = RdtTrain.model_validate({"model_size": "1b", "train_batch_size": 16})
    assert 40 * gib < fused_memory("1b", 16) < 48 * gib  # 41.4 GiB measured on one H200 (docs/rdt.md)
    assert fits_fused(rdt_1b, 80 * gib) and not fits_fused(rdt_1b, 24 * gib) and fits_fused(rdt_1b, None)


def test_a_sharded_optimizer_state_fits_rdt_1b_at_batch_32_on_the_lab_s_four_a6000s() -> None:
    a6000 = 51_527_024_640  # 48 GB (torch's total_memory for an RTX A6000)
    sharded = RdtTrain.model_validate({"model_size": "1b", "train_batch_size": 32})  # shard_optimizer: the default
    lab = sharded.model_copy(update={"shard_optimizer": False})
    assert sharded.shard_optimizer
    assert not fits_fused(lab, a6000, 4)  # DDP, every GPU keeping all 24 bytes a parameter: 59 GiB
    assert fits_fused(sharded, a6000, 4) and not fits_fused(sharded, a6000, 2)  # 6 + 22/N bytes a parameter
    assert fits_fused(sharded, a6000, 1) is fits_fused(lab, a6000, 1)  # one process: nothing to split
    assert fused_memory("1b", 32, 4) == int(1_228_319_872 * (6 + 22 / 4)) + 32 * (1 << 30)


def _halves(data: list[dict[str, torch.Tensor]], rank: int, start: int = 0) -> list[Any]:
    """Each rank's half of every batch, with its own noise generator."""
    h = data[0]["actions"].shape[0] // 2
    return [({k: v[rank * h:(rank + 1) * h] for k, v in b.items()}, 100 * (start + i) + rank) for i, b in enumerate(data)]


def _step_all(engine: Any, steps: list[list[Any]]) -> list[float]:
    """One optimizer step a list of (half batch, noise seed) micro-batches; the last micro-batch's loss."""
    dev = engine.acc.device
    alphas = torch.as_tensor(schedulers(CFG)[0].alphas_cumprod, dtype=torch.float32).to(dev)  # type: ignore[attr-defined]
    fn = lambda m, bb, g: _loss(m, Tokens(), bb, alphas, CFG, torch.bfloat16, g)  # noqa: E731
    return [float(engine.step([({k: v.to(dev) for k, v in b.items()}, torch.Generator(dev).manual_seed(s))
                               for b, s in micro], fn).detach()) for micro in steps]


def _join(rank: int, world: int, port: int, backend: str, o: RdtTrain | None = None) -> Any:
    """This process's accelerator in a group of `world` started by mp.spawn (the fused engine's, or for `o`)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if backend == "gloo":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    return make_accelerator(o or opts(), fused=o is None)[0]


def _zero_rank(rank: int, world: int, port: int, out: str) -> None:
    """Three steps with DeepSpeed ZeRO-2 (CPU, fp32), a checkpoint, three more."""
    o = opts(zero_stage=2)
    # as `accelerate launch --use_deepspeed` sets them on a machine without GPUs
    os.environ.update(ACCELERATE_USE_DEEPSPEED="true", DS_ACCELERATOR="cpu")
    engine = AccelerateEngine(_join(rank, world, port, "deepspeed", o), model(), o, deepspeed=True)
    data = batches(6)
    first = run(engine, data[:3], torch.float32)
    engine.save(Path(out) / "checkpoint-3")
    at3 = [p.detach().clone() for p in engine.module.parameters()]
    zero_opt = engine.model.optimizer  # DeepSpeed's ZeRO optimizer: AdamW over one flat fp32 partition
    moments = zero_opt.optimizer.state[zero_opt.single_partition_of_fp32_groups[0]]
    avg, avg_sq = (moments[k].detach().clone() for k in ("exp_avg", "exp_avg_sq"))
    rest = run(engine, data[3:], torch.float32, start=3)
    torch.save({"losses": first + rest, "at3": at3, "lr": engine.optimizer.param_groups[0]["lr"], "exp_avg": avg,
                "exp_avg_sq": avg_sq}, Path(out) / "zero.pt")
    engine.close()  # as the training loop ends


def test_a_deepspeed_zero_checkpoint_resumes_in_the_fused_engine(tmp_path: Path) -> None:
    """DeepSpeed's own converter reads its shards; the masters are its fp32 weights exactly, AdamW goes on from
    its moments (the next losses follow DeepSpeed's own within bf16 tolerance)."""
    mp.spawn(then_leave, args=(_zero_rank, 1, free_port(), str(tmp_path)), nprocs=1, join=True)
    zero = torch.load(tmp_path / "zero.pt", weights_only=True)
    folder = tmp_path / "checkpoint-3"
    assert list((folder / "pytorch_model").glob("zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    acc, _, _ = make_accelerator(opts(), fused=True)
    fused = FusedEngine(acc, model(), opts(), compile=False)
    note = fused.load(folder)
    assert note is not None and "saved by 1 process(es), for the fused engine on 1" in note
    assert all(torch.equal(a, b) for a, b in zip(fused.master.master, zero["at3"], strict=True))
    state = fused.optimizer.state_dict()
    assert float(state["state"][0]["step"]) == 3 and state["param_groups"][0]["lr"] == zero["lr"]
    for k in ("exp_avg", "exp_avg_sq"):  # the moments, in the model's parameter order, as DeepSpeed held them
        ours = torch.cat([state["state"][i][k].flatten() for i in range(len(fused.master.master))])
        assert torch.equal(ours, zero[k][:ours.numel()]) and ours.abs().sum() > 0
    assert run(fused, batches(6)[3:], torch.bfloat16, start=3) == pytest.approx(zero["losses"][3:], rel=5e-2)
    assert not list(tmp_path.glob(".checkpoint-3.universal*"))  # the converted copy is gone
    (folder / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"truncated")
    with pytest.raises(ResumeError, match=r"cannot convert .*checkpoint-3's DeepSpeed ZeRO state for the fused engine"):
        FusedEngine(acc, model(), opts(), compile=False).load(folder)


def _disagreeing_rank(rank: int, world: int, port: int, out: str) -> None:
    acc = _join(rank, world, port, "gloo")
    check_same_engine(acc, True)  # agreeing: nothing happens
    try:
        check_same_engine(acc, rank == 0)  # a machine whose GPUs are too small for the fused engine
    except ValueError as e:
        Path(out, f"rank{rank}.txt").write_text(str(e))


def test_processes_that_picked_different_engines_all_stop_naming_the_ranks(tmp_path: Path) -> None:
    mp.spawn(then_leave, args=(_disagreeing_rank, 2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        said = (tmp_path / f"rank{rank}.txt").read_text()
        assert "fused on ranks [0], accelerate + DeepSpeed on ranks [1]" in said and "steps.train.engine" in said


def _fused_rank(rank: int, world: int, port: int, out: str, backend: str, compile: bool = False,
                shard: bool = False, start: str | None = None) -> None:
    """Six steps on half-batches (three after resuming `start`'s checkpoint-3), a checkpoint after the third."""
    acc = _join(rank, world, port, backend)
    assert acc.num_processes == world
    torch.manual_seed(rank)  # ranks built differently: process 0's weights are the ones that train
    engine = FusedEngine(acc, RdtRunner(CFG), opts(shard_optimizer=shard), compile=compile)
    assert engine.sharded is shard
    if not shard:
        assert torch._dynamo.config.optimize_ddp is not compile  # compiled: one graph, the all-reduce after it
    data = batches(6)
    first: list[float] = []
    if start is None:
        first = _step_all(engine, [[m] for m in _halves(data[:3], rank)])
        engine.save(Path(out) / "checkpoint-3")
    else:
        engine.load(Path(start) / "checkpoint-3")
        engine.ema.load(Path(start) / "checkpoint-3" / "ema", 3)
    at3 = [m.detach().cpu().clone() for m in engine.master.master]
    rest = _step_all(engine, [[m] for m in _halves(data[3:], rank, start=3)])
    cpu = [m.cpu() for m in engine.master.master]
    weights = [p.detach().float().cpu() for p in engine.model.parameters()]
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save({"losses": first + rest, "at3": at3, "end": cpu, "weights": weights}, Path(out) / f"rank{rank}.pt")


def _dist(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """How far apart two lists of tensors are (the norm of all their differences)."""
    return float(torch.cat([(x - y).flatten() for x, y in zip(xs, ys, strict=True)]).norm())


def _ddp_and_sharded(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Process 1's results of the DDP run in folder/False and the sharded one in folder/True, once the sharded
    processes are seen to end with the same weights and to follow DDP's losses (within bf16)."""
    ddp, sharded = (torch.load(folder / str(s) / "rank1.pt", weights_only=True) for s in (False, True))
    sharded0 = torch.load(folder / "True" / "rank0.pt", weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(sharded0["weights"], sharded["weights"], strict=True))
    assert sharded["losses"] == pytest.approx(ddp["losses"], rel=2e-2)
    return ddp, sharded


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")


@pytest.mark.parametrize("backend", ["gloo", pytest.param("nccl", marks=[pytest.mark.gpu, two_gpus])])
def test_fused_engine_on_two_processes_averages_like_one_accumulating_both_halves(tmp_path: Path,
                                                                                   backend: str) -> None:
    """nccl: two GPUs, against one process on the first GPU."""
    mp.spawn(then_leave, args=(_fused_rank, 2, free_port(), str(tmp_path), backend), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(r0["end"], r1["end"], strict=True))  # replicas stay identical
    data = batches(6)
    acc, _, _ = make_accelerator(opts(), fused=True)
    two = opts(gradient_accumulation_steps=2)
    one = FusedEngine(acc, model(), two, compile=False)
    both = [[a, b] for a, b in zip(_halves(data, 0), _halves(data, 1), strict=True)]
    assert _step_all(one, both) == pytest.approx(r1["losses"], rel=2e-2)  # the last micro-batch is rank 1's half
    # the two-process checkpoint resumes in one process: the same masters, then the same steps
    again = FusedEngine(acc, model(), two, compile=False)
    again.load(tmp_path / "checkpoint-3")
    assert all(torch.equal(a.cpu(), b) for a, b in zip(again.master.master, r0["at3"], strict=True))
    assert _step_all(again, both[3:]) == pytest.approx(r1["losses"][3:], rel=2e-2)


@pytest.mark.slow
def test_compiled_fused_engine_on_two_processes_trains_as_the_uncompiled_one(tmp_path: Path) -> None:
    """torch.compile over DDP as one graph (optimize_ddp off): the replicas agree and the losses are the uncompiled
    engine's (gloo, CPU inductor)."""
    for compiled in (False, True):
        mp.spawn(then_leave, args=(_fused_rank, 2, free_port(), str(tmp_path / str(compiled)), "gloo", compiled), nprocs=2,
                 join=True)
    plain, comp = (torch.load(tmp_path / str(c) / "rank1.pt", weights_only=True) for c in (False, True))
    r0 = torch.load(tmp_path / "True" / "rank0.pt", weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(r0["end"], comp["end"], strict=True))  # replicas stay identical
    assert comp["losses"] == pytest.approx(plain["losses"], rel=2e-2)
    moved = _dist(plain["end"], plain["at3"])  # what the last three steps changed
    assert moved > 0 and _dist(comp["end"], plain["end"]) < 0.25 * moved  # 0.052 against 0.54 when written


@pytest.mark.parametrize("backend", ["gloo", pytest.param("nccl", marks=[pytest.mark.gpu, two_gpus])])
def test_sharded_fused_engine_trains_as_ddp_and_writes_the_unsharded_checkpoint(tmp_path: Path, backend: str) -> None:
    """shard_optimizer over two processes: every process ends with all the new weights, the losses follow DDP's
    (within bf16: DDP averages bf16 gradients, the shards sum them in bf16 and average in fp32), and checkpoints
    cross both ways: the sharded one resumes unsharded in one process (nccl: on the first GPU), DDP's resumes
    sharded."""
    for shard in (False, True):
        mp.spawn(then_leave, args=(_fused_rank, 2, free_port(), str(tmp_path / str(shard)), backend, False, shard), nprocs=2,
                 join=True)
    ddp, sharded = _ddp_and_sharded(tmp_path)

    moved = _dist(ddp["end"], ddp["at3"])
    assert moved > 0 and _dist(sharded["weights"], ddp["weights"]) < 0.01 * moved  # 0.0 on gloo when written
    # the sharded checkpoint is an unsharded one: every parameter's master and AdamW state, the EMA by name
    folder = tmp_path / "True" / "checkpoint-3"
    saved, theirs = (checkpoint_io.load(tmp_path / s / "checkpoint-3" / FUSED_OPTIMIZER, "cpu")
                     for s in ("True", "False"))
    assert [m.shape for m in saved["master"]] == [m.shape for m in theirs["master"]]
    assert saved["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
    assert set(saved["optimizer"]["state"]) == set(theirs["optimizer"]["state"]) == set(range(len(saved["master"])))
    assert float(saved["optimizer"]["state"][0]["step"]) == 3.0
    acc, _, _ = make_accelerator(opts(), fused=True)
    two = opts(gradient_accumulation_steps=2)
    one = FusedEngine(acc, model(), two, compile=False)
    one.load(folder)
    one.ema.load(folder / "ema", 3)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(one.master.master, saved["master"], strict=True))
    assert all(torch.equal(a, b.to(a)) for a, b in zip(one.model.parameters(), saved["master"], strict=True))
    data = batches(6)
    both = [[a, b] for a, b in zip(_halves(data, 0), _halves(data, 1), strict=True)]
    assert _step_all(one, both[3:]) == pytest.approx(sharded["losses"][3:], rel=2e-2)
    # DDP's checkpoint resumed by two sharded processes: the same next losses
    mp.spawn(then_leave, args=(_fused_rank, 2, free_port(), str(tmp_path / "resumed"), backend, False, True,
                                str(tmp_path / "False")), nprocs=2, join=True)
    resumed = torch.load(tmp_path / "resumed" / "rank1.pt", weights_only=True)
    assert resumed["losses"] == pytest.approx(ddp["losses"][3:], rel=2e-2)


def _accumulating_rank(rank: int, world: int, port: int, out: str, shard: bool) -> None:
    """Four steps of two micro-batches each (gradient_accumulation_steps: 2) on this rank's half-batches."""
    acc = _join(rank, world, port, "gloo")
    torch.manual_seed(rank)
    engine = FusedEngine(acc, RdtRunner(CFG), opts(shard_optimizer=shard, gradient_accumulation_steps=2), compile=False)
    start = [m.detach().cpu().clone() for m in engine.master.master]
    steps = [[({k: v[:1] for k, v in b.items()}, seed), ({k: v[1:] for k, v in b.items()}, seed + 50)]
             for b, seed in _halves(batches(4), rank)]
    losses = _step_all(engine, steps)
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save({"losses": losses, "start": start, "end": [m.detach().cpu() for m in engine.master.master],
                "weights": [p.detach().float().cpu() for p in engine.model.parameters()]}, Path(out) / f"rank{rank}.pt")


def test_sharded_engine_accumulating_micro_batches_trains_as_ddp_does(tmp_path: Path) -> None:
    """shard_optimizer with gradient_accumulation_steps 2: gradients accumulate locally over the micro-batches and
    are reduce-scattered once a step, as DDP (no_sync, then one all-reduce) does."""
    for shard in (False, True):
        mp.spawn(then_leave, args=(_accumulating_rank, 2, free_port(), str(tmp_path / str(shard)), shard), nprocs=2, join=True)
    ddp, sharded = _ddp_and_sharded(tmp_path)

    moved = _dist(ddp["end"], ddp["start"])
    assert moved > 0 and _dist(sharded["weights"], ddp["weights"]) < 1e-4 * moved  # 0.0 on gloo when written


def _counts_rank(rank: int, world: int, port: int, out: str, start: str | None) -> None:
    """shard_optimizer over `world` gloo processes, a 4-sample batch split evenly: three steps then checkpoint-3,
    or (`start`) `start`'s checkpoint-3 loaded and written again at once, then two steps."""
    acc = _join(rank, world, port, "gloo")
    torch.manual_seed(rank)
    engine = FusedEngine(acc, RdtRunner(CFG), opts(shard_optimizer=True), compile=False)
    assert engine.sharded
    n = 4 // world
    parts = [[({k: v[rank * n:(rank + 1) * n] for k, v in b.items()}, 100 * i + rank)] for i, b in enumerate(batches(3))]
    if start is None:
        _step_all(engine, parts)
    else:
        engine.load(Path(start) / "checkpoint-3")
        engine.ema.load(Path(start) / "checkpoint-3" / "ema", 3)
    engine.save(Path(out) / "checkpoint-3")
    if start is not None:
        _step_all(engine, parts[:2])
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save([p.detach().float().cpu() for p in engine.model.parameters()], Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_a_sharded_checkpoint_moves_between_four_and_two_processes_unchanged(tmp_path: Path) -> None:
    """Each count splits the state at other boundaries; the checkpoint is the same whole state either way: four
    processes' checkpoint loaded by two and written again is the same bytes of state, and back to four; every
    process then trains on with the same weights."""
    runs = [(4, None, "four"), (2, "four", "two"), (4, "two", "four_again")]
    for world, start, out in runs:
        mp.spawn(then_leave, args=(_counts_rank, world, free_port(), str(tmp_path / out),
                                   str(tmp_path / start) if start else None), nprocs=world, join=True)

    def state(name: str) -> tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        from safetensors.torch import load_file

        folder = tmp_path / name / "checkpoint-3"
        return (checkpoint_io.load(folder / FUSED_OPTIMIZER, "cpu"), load_file(str(folder / "ema" / "model.safetensors")),
                checkpoint_io.load(folder / MODEL_FILE, "cpu")["module"])

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        if isinstance(a, dict):
            return isinstance(b, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in a)
        if isinstance(a, list | tuple):
            return isinstance(b, list | tuple) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
        return bool(a == b)

    four, two, again = state("four"), state("two"), state("four_again")
    assert float(four[0]["optimizer"]["state"][0]["step"]) == 3.0
    assert same(four, two) and same(two, again)
    for name, world in (("two", 2), ("four_again", 4)):
        ranks = [torch.load(tmp_path / name / f"rank{r}.pt", weights_only=True) for r in range(world)]
        assert all(same(ranks[0], r) for r in ranks[1:])
