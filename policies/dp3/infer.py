"""DP3 inference: `load(checkpoint) -> Policy` with `reset()` and `act(obs) -> action chunk`, for deploy and eval."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.cuda_graph import Graphed, compile_failed, compile_unavailable
from policies.dp3.model import DP3, Dp3Config


def model_from_payload(payload: dict[str, Any], device: torch.device, use_ema: bool = True) -> DP3:
    cfg_dict = dict(payload["cfg"]["model"])
    cfg_dict["state_mlp_size"] = tuple(cfg_dict["state_mlp_size"])
    cfg_dict["down_dims"] = tuple(cfg_dict["down_dims"])
    model = DP3(Dp3Config(**cfg_dict))
    weights = payload["state_dicts"]["ema_model"] if use_ema and payload["state_dicts"].get("ema_model") else \
        payload["state_dicts"]["model"]
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval()


class Policy:
    """Keeps the last n_obs_steps observations (the first repeated until there are enough), as upstream's runner."""

    def __init__(self, model: DP3, payload: dict[str, Any], seed: int = 0, fast: bool = True,
                 compile: bool = True) -> None:
        self.model = model
        self.cfg = model.cfg
        self.conversion: dict[str, Any] = payload["cfg"].get("conversion", {})
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.history: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=self.cfg.n_obs_steps)
        # On a GPU: bf16 weights, one compiled denoising step, the whole chunk one CUDA graph (built here, so the
        # compilation happens at load, not at the robot's first action).
        self.predictor = GraphedPredictor(model, compile=compile) if fast and self.device.type == "cuda" else None

    def reset(self) -> None:
        self.history.clear()

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """obs: point_cloud (P, C), agent_pos (D,) -> (n_action_steps, A) actions in robot units."""
        self.observe(obs)
        return self._predict([h[0] for h in self.history], [h[1] for h in self.history])

    def predict_window(self, window: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Actions from an explicit window of n_obs_steps observations (oldest first), leaving the history alone:
        the deploy loop keeps its own window and predicts from another thread."""
        if len(window) != self.cfg.n_obs_steps:
            msg = f"need {self.cfg.n_obs_steps} observations, got {len(window)}"
            raise ValueError(msg)
        return self._predict([np.asarray(o["point_cloud"], np.float32) for o in window],
                             [np.asarray(o["agent_pos"], np.float32) for o in window])

    def _predict(self, clouds: list[np.ndarray], states: list[np.ndarray]) -> np.ndarray:
        pcs = torch.from_numpy(np.stack(clouds))[None].to(self.device)
        poss = torch.from_numpy(np.stack(states))[None].to(self.device)
        if self.predictor is not None:
            return self.predictor(pcs, poss, generator=self.generator)[0].cpu().numpy()
        return self.model.predict_action(pcs, poss, generator=self.generator)[0].float().cpu().numpy()

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Add an observation to the history without predicting (between the actions of one chunk)."""
        pc = np.asarray(obs["point_cloud"], dtype=np.float32)
        pos = np.asarray(obs["agent_pos"], dtype=np.float32)
        if pc.shape[0] != self.cfg.num_points or pos.shape[-1] != self.cfg.state_dim:
            msg = (f"observation point_cloud {pc.shape} / agent_pos {pos.shape} do not match the checkpoint "
                   f"({self.cfg.num_points} points, state dim {self.cfg.state_dim})")
            raise ValueError(msg)
        if not self.history:
            self.history.extend([(pc, pos)] * self.cfg.n_obs_steps)
        else:
            self.history.append((pc, pos))


def load(checkpoint: Path, device: str | torch.device | None = None, compile: bool = True) -> Policy:
    """A ready policy from a checkpoint written by `runner train` (EMA weights); `compile`: its GPU denoising step."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from policies.dp3.checkpoints import load_file

    payload = load_file(checkpoint, dev)
    return Policy(model_from_payload(payload, dev), payload, compile=compile)


class GraphedPredictor:
    """predict_action as one CUDA graph: encoder, 10 DDIM steps and un-normalisation replayed with one launch.

    DDIM (eta 0, sample prediction, clipped, final alpha 1) is computed from precomputed coefficients, which
    equals diffusers' DDIMScheduler.step for this configuration (tested against it). The initial noise is drawn
    outside the graph from the caller's generator, so results stay seedable. With `compile`, one denoising step
    (U-Net + DDIM update) is compiled by torch.compile before capture: it fuses the group norms, Mish, FiLM and
    layout copies, so the graph holds far fewer kernels. Without CUDA it runs the same arithmetic eagerly.
    """

    def __init__(self, model: DP3, batch: int = 1, bf16: bool = True, compile: bool = False, warmup: int = 3,
                 say: Callable[[str], None] | None = None) -> None:
        import copy

        cfg = model.cfg
        dev = next(model.parameters()).device
        if bf16:
            # Weights cast once (autocast would re-cast 262M parameters on every call); the normaliser stays fp32.
            model = copy.deepcopy(model)
            model.model.to(torch.bfloat16)
            model.obs_encoder.to(torch.bfloat16)
        self.model, self.cfg, self.dtype = model, cfg, torch.bfloat16 if bf16 else torch.float32
        self.steps, self.scales = [], []
        for t, a_t, a_prev in ddim_coefficients(model):
            self.steps.append(torch.full((batch,), t, device=dev, dtype=torch.long))
            self.scales.append(torch.tensor([a_t ** 0.5, (1 - a_t) ** 0.5, a_prev ** 0.5, (1 - a_prev) ** 0.5],
                                            device=dev))
        self.example = {"point_cloud": torch.zeros((batch, cfg.n_obs_steps, cfg.num_points, cfg.point_channels),
                                                   device=dev),
                        "agent_pos": torch.zeros((batch, cfg.n_obs_steps, cfg.state_dim), device=dev),
                        "noise": torch.zeros((batch, cfg.horizon, cfg.action_dim), device=dev)}
        self.step_fn: Callable[..., torch.Tensor] = self._ddim_step
        self.graph: Graphed | None = None
        if dev.type != "cuda":
            return
        reason = compile_unavailable() if compile else None
        if reason:
            (say or print)(f"inference: not compiling the denoising step: {reason}")
        elif compile:
            self.step_fn = torch.compile(self._ddim_step, dynamic=False)
            try:
                self.graph = Graphed(self._run, self.example, warmup)
                return
            except Exception as exc:  # noqa: BLE001  # a compiler failure must not stop inference
                (say or print)("inference: " + compile_failed(exc, "running without it"))
                self.step_fn = self._ddim_step
        self.graph = Graphed(self._run, self.example, warmup)

    def _ddim_step(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """One DDIM update; c = sqrt(a_t), sqrt(1 - a_t), sqrt(a_prev), sqrt(1 - a_prev)."""
        x0: torch.Tensor = self.model.model(x.to(self.dtype), t, cond).float()
        eps = (x - c[0] * x0) / c[1]  # from the unclipped x0, as diffusers does
        return c[2] * x0.clamp(-1.0, 1.0) + c[3] * eps

    @torch.no_grad()
    def _run(self, point_cloud: torch.Tensor, agent_pos: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        m = self.model
        npc = m.normalizer.normalize("point_cloud", point_cloud).to(self.dtype)
        cond = m.global_cond(npc, m.normalizer.normalize("agent_pos", agent_pos).to(self.dtype))
        x = noise
        for t, c in zip(self.steps, self.scales, strict=True):
            x = self.step_fn(x, t, cond, c)
        start = self.cfg.n_obs_steps - 1
        out: torch.Tensor = m.normalizer.unnormalize("action", x)
        return out[:, start:start + self.cfg.n_action_steps]

    @torch.no_grad()
    def __call__(self, point_cloud: torch.Tensor, agent_pos: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        noise = self.example["noise"]
        inputs = {"point_cloud": point_cloud, "agent_pos": agent_pos,
                  "noise": torch.randn(noise.shape, generator=generator, device=noise.device)}
        return (self.graph(inputs) if self.graph is not None else self._run(**inputs)).clone()


def ddim_coefficients(model: DP3) -> list[tuple[int, float, float]]:
    """(timestep, alpha_bar_t, alpha_bar_prev) for each inference step of the model's DDIM scheduler."""
    sched: Any = model.noise_scheduler
    sched.set_timesteps(model.cfg.num_inference_steps)
    ratio = sched.config.num_train_timesteps // sched.num_inference_steps
    alphas = sched.alphas_cumprod
    out = []
    for t in sched.timesteps.tolist():
        prev = t - ratio
        out.append((int(t), float(alphas[t]), float(alphas[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)))
    return out
