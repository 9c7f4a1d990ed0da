"""The GPU fast paths (CUDA-graph training step, compiled graph predictor) against the plain eager code.

The CPU tests check the arithmetic that the fast paths share with the GPU (DDIM coefficients against diffusers'
scheduler, flattened weights); the `gpu` tests run the captured and compiled versions on a CUDA device."""

from dataclasses import replace

import pytest
import torch

from policies.dp3.config import Dp3Train
from policies.dp3.infer import GraphedPredictor, Policy
from policies.dp3.model import DP3, Dp3Config
from policies.dp3.optim_step import GraphedStep, flatten_into_one, train_step
from policies.dp3.train import make_optimizer
from policies.ema import Ema
from policies.training import lr_scheduler

TINY = Dp3Config(state_dim=8, action_dim=8, num_points=64, down_dims=(32, 64, 128), n_groups=8)


def fitted(cfg: Dp3Config, device: str = "cpu") -> DP3:
    torch.manual_seed(0)
    m = DP3(cfg)
    g = torch.Generator().manual_seed(0)
    m.normalizer.fit({"action": torch.randn(50, cfg.action_dim, generator=g),
                      "agent_pos": torch.randn(50, cfg.state_dim, generator=g),
                      "point_cloud": torch.randn(50, cfg.num_points, 6, generator=g)})
    return m.to(device)


def obs(cfg: Dp3Config, device: str, batch: int = 1, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pc = torch.randn(batch, cfg.n_obs_steps, cfg.num_points, 6, generator=g)
    pos = torch.randn(batch, cfg.n_obs_steps, cfg.state_dim, generator=g)
    return pc.to(device), pos.to(device)


def test_predictor_arithmetic_equals_diffusers_ddim_on_cpu() -> None:
    m = fitted(TINY).eval()
    pc, pos = obs(TINY, "cpu", batch=2)
    ref = m.predict_action(pc, pos, generator=torch.Generator().manual_seed(3))
    fast = GraphedPredictor(m, batch=2, bf16=False)
    assert fast.graph is None  # no CUDA: the same arithmetic, eagerly
    out = fast(pc, pos, generator=torch.Generator().manual_seed(3))
    assert out.shape == (2, TINY.n_action_steps, TINY.action_dim)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_flatten_into_one_keeps_values_and_parameters() -> None:
    m = fitted(TINY)
    params = [p for p in m.parameters() if p.requires_grad and p.numel()]
    before = [p.detach().clone() for p in params]
    ids = [id(p) for p in params]
    flat = flatten_into_one(params)
    assert flat.numel() == sum(p.numel() for p in params)
    assert [id(p) for p in m.parameters() if p.requires_grad and p.numel()] == ids
    for p, b in zip(params, before, strict=True):
        assert torch.equal(p, b)
        assert p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    flat.mul_(2)  # one kernel reaches every parameter
    assert torch.equal(params[3], before[3] * 2)
    with pytest.raises(ValueError, match="one dtype"):
        flatten_into_one([torch.zeros(2), torch.zeros(2, dtype=torch.float64)])


cuda = pytest.mark.gpu


def _run_steps(graphed: bool, compile: bool, steps: int = 8, short: tuple[int, ...] = (7,),
               short_graph: bool = True) -> tuple[list[float], DP3, Ema, int]:
    """`short`: the steps that get an epoch's short last batch (8 rows, not 16). short_graph=False: the graphed step
    runs them eagerly, as it did before they had a graph of their own."""
    dev = torch.device("cuda")
    m = fitted(TINY, "cuda")
    ema = Ema(m, copy_module=True)
    opt = make_optimizer(m, Dp3Train(lr=1e-4), dev, graphed=graphed)
    sched = lr_scheduler(opt, "cosine", 2, 100)
    gen = torch.Generator(dev).manual_seed(0)
    stepper = GraphedStep(m, opt, sched, ema, 1.0, compile=compile) if graphed else None
    if stepper is not None and not short_graph:
        stepper._short = lambda inputs: stepper._eager(stepper._eager_loss, inputs)  # type: ignore[method-assign]
    losses = []
    for i in range(steps):
        n = 8 if i in short else 16
        pc, pos = obs(replace(TINY, n_obs_steps=TINY.horizon), "cuda", batch=n, seed=i)
        act = torch.randn(n, TINY.horizon, TINY.action_dim, generator=torch.Generator().manual_seed(100 + i)).cuda()
        batch = (pc, pos, act)
        loss = stepper(batch, gen, full=n == 16) if stepper else train_step(m, m, opt, sched, ema, batch, gen, 1.0)
        losses.append(float(loss.detach()))
    return losses, m, ema, len(stepper.short_graphs) if stepper else 0


def _close_models(a: tuple[DP3, Ema], b: tuple[DP3, Ema], atol: float) -> None:
    for ma, mb in ((a[0], b[0]), (a[1].model, b[1].model)):
        for (name, pa), pb in zip(ma.named_parameters(), mb.parameters(), strict=True):
            torch.testing.assert_close(pb, pa, rtol=0, atol=atol, msg=name)


@cuda
@pytest.mark.parametrize("compile", [False, True])
def test_graphed_step_follows_the_eager_step(compile: bool) -> None:
    eager, m_e, ema_e, _ = _run_steps(graphed=False, compile=False)
    graph, m_g, ema_g, _ = _run_steps(graphed=True, compile=compile)
    torch.testing.assert_close(torch.tensor(graph), torch.tensor(eager), rtol=2e-2 if compile else 1e-3, atol=1e-4)
    # Adam moves a weight by at most ~lr (1e-4) a step, so a gradient that rounds differently (bf16 kernels fused
    # differently when compiled) can move it by 2 lr a step; the uncompiled graph runs the eager kernels.
    _close_models((m_e, ema_e), (m_g, ema_g), 8 * 2e-4 if compile else 2e-4)


@cuda
def test_short_batches_graph_equals_running_them_eagerly() -> None:
    """Epochs' short last batches: the first before the full graph exists and the next of their shape run eagerly,
    then one graph of their own is captured and replayed. It runs the same kernels on the same numbers as running
    them eagerly inside the graphed step (the behaviour before), so both give the same losses and weights."""
    short = (2, 5, 8, 11)
    eager, m_e, ema_e, none = _run_steps(graphed=True, compile=False, steps=12, short=short, short_graph=False)
    graph, m_g, ema_g, captured = _run_steps(graphed=True, compile=False, steps=12, short=short)
    assert (none, captured) == (0, 1)
    torch.testing.assert_close(torch.tensor(graph), torch.tensor(eager), rtol=1e-5, atol=1e-6)
    _close_models((m_e, ema_e), (m_g, ema_g), 1e-6)


@cuda
def test_graphed_predictor_matches_eager_on_cuda() -> None:
    m = fitted(TINY, "cuda").eval()
    pc, pos = obs(TINY, "cuda")
    ref = m.predict_action(pc, pos, generator=torch.Generator("cuda").manual_seed(3))
    exact = GraphedPredictor(m, bf16=False)
    assert exact.graph is not None
    torch.testing.assert_close(exact(pc, pos, generator=torch.Generator("cuda").manual_seed(3)), ref,
                               atol=1e-4, rtol=1e-4)
    fast = GraphedPredictor(m, bf16=True, compile=True)
    out = fast(pc, pos, generator=torch.Generator("cuda").manual_seed(3))
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max()) + 1e-3
    again = fast(pc, pos, generator=torch.Generator("cuda").manual_seed(3))
    assert torch.equal(out, again)  # replays are deterministic


@cuda
def test_policy_on_cuda_acts_through_the_graph() -> None:
    import numpy as np

    m = fitted(TINY, "cuda").eval()
    policy = Policy(m, {"cfg": {}})
    assert policy.predictor is not None
    rng = np.random.default_rng(0)
    out = policy.act({"point_cloud": rng.normal(size=(64, 6)).astype(np.float32),
                      "agent_pos": rng.normal(size=8).astype(np.float32)})
    assert out.shape == (TINY.n_action_steps, TINY.action_dim) and np.isfinite(out).all()
