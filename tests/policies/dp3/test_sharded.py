"""ZeRO-1 (policies.dp3.sharded) against DDP's arithmetic: two CPU processes over gloo, or two GPUs over NCCL."""

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from policies import process_group
from policies.dp3.config import Dp3Train
from policies.dp3.model import DP3, Dp3Config
from policies.dp3.optim_step import flatten_into_one
from policies.dp3.sharded import ShardedAdamW
from policies.ema import Ema
from policies.training import lr_scheduler
from tests.policies.process_groups import then_leave

TINY = Dp3Config(state_dim=8, action_dim=8, num_points=32, down_dims=(16, 32, 64))
CLIP = 0.05  # small enough that every step clips


def _adamw(model: DP3) -> torch.optim.AdamW:
    s = Dp3Train(lr=1e-3)
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr, betas=s.betas,
                             weight_decay=s.weight_decay, fused=True)


def _tiny_model() -> DP3:
    """The same tiny DP3 (weights and normaliser) in every process."""
    torch.manual_seed(0)
    model = DP3(TINY)
    g = torch.Generator().manual_seed(0)
    model.normalizer.fit({"action": torch.randn(50, 8, generator=g), "agent_pos": torch.randn(50, 8, generator=g),
                          "point_cloud": torch.randn(50, 32, 6, generator=g)})
    return model


def _learned(model: torch.nn.Module, like: DP3) -> list[torch.nn.Parameter]:
    return [e for e, p in zip(model.parameters(), like.parameters(), strict=True) if p.requires_grad and p.numel()]


def _worker(rank: int, world: int, store: str, backend: str, low: bool) -> None:
    process_group.join(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    dev = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    ref = _tiny_model().to(dev)
    sh = copy.deepcopy(ref)
    ema_ref, ema_sh = Ema(ref, copy_module=True), Ema(sh, copy_module=True)
    opt_ref, opt_sh = _adamw(ref), _adamw(sh)
    sched_ref, sched_sh = lr_scheduler(opt_ref, "cosine", 1, 10), lr_scheduler(opt_sh, "cosine", 1, 10)
    params = _learned(sh, sh)
    flat = flatten_into_one(params, pad_to=world)
    flat_ema = flatten_into_one(_learned(ema_sh.model, sh), pad_to=world)
    assert flat.numel() % world == 0 and flat.numel() >= sum(p.numel() for p in params)
    reduce_dtype = torch.bfloat16 if low else None
    sharded = ShardedAdamW(params, flat, flat_ema, opt_sh, rank, world, CLIP, reduce_dtype)
    for step in range(4):
        bg = torch.Generator().manual_seed(100 * step + rank)  # each rank its own batch
        batch = tuple(t.to(dev) for t in (torch.randn(4, TINY.horizon, 32, 6, generator=bg),
                                          torch.randn(4, TINY.horizon, 8, generator=bg),
                                          torch.randn(4, TINY.horizon, 8, generator=bg)))
        noise, steps = ref.draw_noise(batch[2], torch.Generator(dev).manual_seed(7 + step + 10 * rank))
        # reference: what DDP + clip_grad_norm_ + AdamW + Ema do
        opt_ref.zero_grad(set_to_none=True)
        ref(*batch, noise, steps).backward()
        for p in ref.parameters():
            if p.grad is not None:
                # low: each rank's gradient rounded to bf16 and summed in bf16, as the sharded reduction does
                summed = p.grad.to(reduce_dtype) if low else p.grad
                dist.all_reduce(summed)
                p.grad.copy_(summed)
                p.grad /= world
        torch.nn.utils.clip_grad_norm_(ref.parameters(), CLIP)
        opt_ref.step()
        sched_ref.step()
        ema_ref.update(ref)
        # sharded
        opt_sh.zero_grad(set_to_none=True)
        sh(*batch, noise, steps).backward()
        summed = torch.zeros_like(flat, dtype=reduce_dtype or flat.dtype)  # every rank's gradients summed
        torch.cat([p.grad.reshape(-1) for p in params], out=summed[:sum(p.numel() for p in params)])
        dist.all_reduce(summed)
        sharded.step(torch.tensor(1 - ema_sh.decay(), device=dev))
        # the reduction itself (fused AdamW leaves the gradient divided by its grad_scale)
        assert torch.equal(sharded.shard.grad, summed[sharded.lo:sharded.hi].to(flat.dtype) / sharded.divisor)
        sched_sh.step()
        ema_sh.steps += 1
    # bf16 sums: the clip factor applied before or inside AdamW rounds differently, amplified where v ~ 0; the
    # next steps' gradients then differ by that and may round to the neighbouring bf16 value (1/256 apart)
    w_atol, s_rtol = (1e-4, 1e-2) if low else (1e-6, 1e-4)
    for (name, a), b in zip(ref.named_parameters(), sh.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=w_atol, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    sharded.gather_ema()
    for (name, a), b in zip(ema_ref.model.named_parameters(), ema_sh.model.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=w_atol, rtol=1e-5, msg=f"ema {name}")
    sharded.export_state()
    ref_state, sh_state = opt_ref.state_dict()["state"], opt_sh.state_dict()["state"]
    assert ref_state.keys() == sh_state.keys()
    for i, st in ref_state.items():
        assert float(sh_state[i]["step"]) == float(st["step"]) == 4
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sh_state[i][k], st[k], atol=1e-7, rtol=s_rtol, msg=lambda m, i=i, k=k: f"{i} {k}: {m}")
    # a resumed run (the exported per-parameter state, maybe from another GPU count) takes the shards over
    again = ShardedAdamW(params, flat, flat_ema, opt_sh, rank, world, CLIP, reduce_dtype)
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(again.inner.state[again.shard][k], sharded.inner.state[sharded.shard][k])
    sharded.drop_exported()  # once saved, the gathered copy goes; the shards stay
    assert not opt_sh.state and sharded.inner.state[sharded.shard]


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")


@pytest.mark.parametrize("low", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["gloo", pytest.param("nccl", marks=[pytest.mark.gpu, two_gpus])])
def test_sharded_adamw_matches_ddp_clipping_adamw_and_ema(tmp_path: Path, backend: str, low: bool) -> None:
    """bf16: gradients summed in bf16 (steps.train.grad_reduce) against DDP's all-reduce of bf16 gradients."""
    mp.spawn(then_leave, args=(_worker, 2, str(tmp_path / "store"), backend, low), nprocs=2, join=True)


def _resume_worker(rank: int, world: int, store: str, start: str, out: str, first: int, steps: int) -> None:
    """ZeRO-1 over `world` gloo processes from the checkpoint `start` ("" : fresh) for `steps` steps of one global
    8-row batch a step, split across the processes; rank 0 saves what DP3's trainer saves (per-parameter AdamW
    state, the weights, the EMA) to `out` and the global losses beside it."""
    process_group.join("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    model = _tiny_model()
    ema, opt = Ema(model, copy_module=True), _adamw(model)
    if start:
        saved = torch.load(start, weights_only=False)
        model.load_state_dict(saved["model"])
        ema.model.load_state_dict(saved["ema"])
        ema.steps = saved["ema_steps"]
        opt.load_state_dict(saved["optimizer"])
    params = _learned(model, model)
    flat, flat_ema = flatten_into_one(params, pad_to=world), flatten_into_one(_learned(ema.model, model), pad_to=world)
    sharded = ShardedAdamW(params, flat, flat_ema, opt, rank, world, CLIP, None)
    losses = []
    for step in range(first, first + steps):
        bg = torch.Generator().manual_seed(1000 + step)  # the step's global batch, whatever the process count
        batch = (torch.randn(8, TINY.horizon, 32, 6, generator=bg), torch.randn(8, TINY.horizon, 8, generator=bg),
                 torch.randn(8, TINY.horizon, 8, generator=bg))
        noise, t = model.draw_noise(batch[2], torch.Generator().manual_seed(2000 + step))
        rows = slice(rank, None, world)
        opt.zero_grad(set_to_none=True)
        loss = model(*(x[rows] for x in batch), noise[rows], t[rows])
        loss.backward()
        sharded.step(torch.tensor(1 - ema.decay()))
        ema.steps += 1
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
    sharded.gather_ema()
    sharded.export_state()
    if rank == 0:
        torch.save({"model": model.state_dict(), "ema": ema.model.state_dict(), "ema_steps": ema.steps,
                    "optimizer": opt.state_dict(), "losses": losses}, out)
    dist.barrier()


def _spawn_resume(tmp_path: Path, world: int, start: str, out: str, first: int, steps: int) -> dict:
    store = tmp_path / f"store-{world}-{first}-{Path(out).stem}"
    mp.spawn(then_leave, args=(_resume_worker, world, str(store), start, out, first, steps), nprocs=world, join=True)
    return torch.load(out, weights_only=False)


@pytest.mark.slow
def test_zero1_checkpoints_resume_across_process_counts_with_the_same_losses(tmp_path: Path) -> None:
    """The CPU stand-in for resuming a 4-GPU DP3 run on 2 GPUs and a 2-GPU one on 4: 4 processes train 3 steps and
    save; from that checkpoint 2 processes and 4 processes each train the same 3 further steps (one global batch a
    step, split across them) and give the same losses and weights; the 2-process checkpoint, loaded by 4 processes
    and saved again without a step, keeps its AdamW state and EMA exactly."""
    a = _spawn_resume(tmp_path, 4, "", str(tmp_path / "a.pt"), 0, 3)
    two = _spawn_resume(tmp_path, 2, str(tmp_path / "a.pt"), str(tmp_path / "two.pt"), 3, 3)
    four = _spawn_resume(tmp_path, 4, str(tmp_path / "a.pt"), str(tmp_path / "four.pt"), 3, 3)
    assert len(a["losses"]) == 3 and two["ema_steps"] == four["ema_steps"] == 6
    # the same mean gradients, summed in another order: float rounding apart, not a different training
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(four["losses"]), rtol=1e-5, atol=1e-6)
    for name, w in four["model"].items():
        torch.testing.assert_close(two["model"][name], w, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    for i, st in four["optimizer"]["state"].items():
        assert float(two["optimizer"]["state"][i]["step"]) == float(st["step"]) == 6
    again = _spawn_resume(tmp_path, 4, str(tmp_path / "two.pt"), str(tmp_path / "again.pt"), 6, 0)
    for i, st in two["optimizer"]["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(again["optimizer"]["state"][i][k], st[k]), (i, k)
    for name, w in two["ema"].items():
        assert torch.equal(again["ema"][name], w), name
    for name, w in two["model"].items():
        assert torch.equal(again["model"][name], w), name


def _gather_worker(rank: int, world: int, store: str, out: str, low_gather: bool, backend: str) -> None:
    """4 ZeRO-1 steps under bf16 autocast (as GPUs train), the weights gathered in bf16 or fp32; rank 0 saves the
    losses, the weights as every rank holds them before and after gather_weights, and the EMA."""
    process_group.join(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    dev = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    model = _tiny_model().to(dev)
    ema, opt = Ema(model, copy_module=True), _adamw(model)
    params = _learned(model, model)
    flat, flat_ema = flatten_into_one(params, pad_to=world), flatten_into_one(_learned(ema.model, model), pad_to=world)
    sharded = ShardedAdamW(params, flat, flat_ema, opt, rank, world, CLIP, torch.bfloat16,
                           torch.bfloat16 if low_gather else None)
    losses = []
    for step in range(4):
        bg = torch.Generator().manual_seed(100 * step + rank)
        batch = tuple(x.to(dev) for x in (torch.randn(4, TINY.horizon, 32, 6, generator=bg),
                                          torch.randn(4, TINY.horizon, 8, generator=bg),
                                          torch.randn(4, TINY.horizon, 8, generator=bg)))
        noise, t = model.draw_noise(batch[2], torch.Generator(dev).manual_seed(7 + step + 10 * rank))
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(*batch, noise, t)
        loss.backward()
        sharded.step(torch.tensor(1 - ema.decay(), device=dev))
        ema.steps += 1
        losses.append(loss.detach().float().clone())
    held = flat.clone()
    everyone = [torch.empty_like(held) for _ in range(world)]
    dist.all_gather(everyone, held)
    sharded.gather_weights()
    sharded.gather_ema()
    all_losses = [torch.empty(4, device=dev) for _ in range(world)]
    dist.all_gather(all_losses, torch.stack(losses))
    size = flat.numel() // world
    if rank == 0:
        torch.save({"losses": torch.stack(all_losses).cpu(), "held": [h.cpu() for h in everyone],
                    "weights": flat.cpu(), "ema": flat_ema.cpu(),
                    "shards": [(r * size, (r + 1) * size) for r in range(world)]}, out)


@pytest.mark.parametrize("backend", ["gloo", pytest.param("nccl", marks=[pytest.mark.gpu, two_gpus])])
def test_weights_gathered_in_bf16_train_exactly_as_fp32_under_autocast(tmp_path: Path, backend: str) -> None:
    """weight_gather: bf16 against fp32 (the default) on two processes: the same losses bit for bit at every step
    (every weight DP3 trains is read as bf16 under autocast), each rank's own shard the exact fp32 master, the
    others' parts bf16 values until gather_weights makes every rank's weights the fp32 ones."""
    runs = {}
    for low in (False, True):
        out = tmp_path / f"{'bf16' if low else 'fp32'}.pt"
        mp.spawn(then_leave, args=(_gather_worker, 2, str(tmp_path / f"store-{low}"), str(out), low, backend), nprocs=2,
                 join=True)
        runs[low] = torch.load(out, weights_only=False)
    exact, low = runs[False], runs[True]
    assert torch.equal(low["losses"], exact["losses"]), (low["losses"], exact["losses"])
    assert torch.equal(low["weights"], exact["weights"]) and torch.equal(low["ema"], exact["ema"])
    for rank, (lo, hi) in enumerate(low["shards"]):
        held = low["held"][rank]
        assert torch.equal(held[lo:hi], exact["weights"][lo:hi])  # its own shard: the fp32 master
        others = torch.cat([held[:lo], held[hi:]])
        full = torch.cat([exact["weights"][:lo], exact["weights"][hi:]])
        assert torch.equal(others, full.bfloat16().float())  # the rest: the masters' bf16 values
        assert not torch.equal(others, full)  # (so the test sees the rounding it claims is harmless)
