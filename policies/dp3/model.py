"""3D Diffusion Policy (Ze et al., RSS 2024) as RoboTwin's policy/DP3 configures it (robot_dp3.yaml).

Module and parameter names follow upstream (`obs_encoder.*`, `model.*`, `normalizer.params_dict.*`,
`_dummy_variable`), so a state dict trained by upstream code loads here with strict key checking and ours
loads there. Written from upstream's published architecture; no upstream code is copied.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from policies.dp3.config import Dp3Train
from runner.spec.models import default_of


@dataclass(frozen=True)
class Dp3Config:
    """The network's shape, recorded in checkpoints; the options a job sets default as in Dp3Train."""

    state_dim: int
    action_dim: int
    num_points: int = default_of(Dp3Train, "num_points")
    point_channels: int = 6  # channels stored in the data; the encoder uses 3 unless use_pc_color
    use_pc_color: bool = default_of(Dp3Train, "use_pc_color")
    horizon: int = default_of(Dp3Train, "horizon")
    n_obs_steps: int = default_of(Dp3Train, "n_obs_steps")
    n_action_steps: int = default_of(Dp3Train, "n_action_steps")
    encoder_output_dim: int = 128
    state_mlp_size: tuple[int, ...] = (64, 64)
    diffusion_step_embed_dim: int = 64
    down_dims: tuple[int, ...] = default_of(Dp3Train, "down_dims")
    kernel_size: int = 5
    n_groups: int = 8
    num_train_timesteps: int = 100
    num_inference_steps: int = 10
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def obs_feature_dim(self) -> int:
        return self.encoder_output_dim + self.state_mlp_size[-1]


class PointNet(nn.Module):
    """Per-point MLP with LayerNorm + ReLU, max-pool over points, projection with LayerNorm.

    Upstream's two encoders, with their layer indices: xyz (3 -> 64 -> 128 -> 256, every layer normalised and
    activated) and xyzrgb (6 -> 64 -> 128 -> 256 -> 512, the last layer linear only)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], out_channels: int, last_activated: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_channels
        for i, width in enumerate(widths):
            layers.append(nn.Linear(dim, width))
            if i < len(widths) - 1 or last_activated:
                layers += [BfLayerNorm(width), nn.ReLU()]
            dim = width
        self.mlp = nn.Sequential(*layers)
        self.final_projection = nn.Sequential(nn.Linear(dim, out_channels), BfLayerNorm(out_channels))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.final_projection(self.mlp(points).max(dim=1).values)


class Dp3Encoder(nn.Module):
    """Point-cloud feature (128) concatenated with a state MLP feature (64)."""

    def __init__(self, cfg: Dp3Config) -> None:
        super().__init__()
        self.use_pc_color = cfg.use_pc_color
        self.extractor = (PointNet(6, (64, 128, 256, 512), cfg.encoder_output_dim, last_activated=False)
                          if cfg.use_pc_color else PointNet(3, (64, 128, 256), cfg.encoder_output_dim, last_activated=True))
        sizes = cfg.state_mlp_size
        layers: list[nn.Module] = []
        dim = cfg.state_dim
        for width in sizes[:-1]:
            layers += [nn.Linear(dim, width), nn.ReLU()]
            dim = width
        layers.append(nn.Linear(dim, sizes[-1]))
        self.state_mlp = nn.Sequential(*layers)

    def forward(self, point_cloud: torch.Tensor, agent_pos: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.extractor(point_cloud), self.state_mlp(agent_pos)], dim=-1)


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=x.device) * -(math.log(10000) / (half - 1)))
        emb = x.float()[:, None] * freq[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


def _low_precision(x: torch.Tensor) -> bool:
    return x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(x.device.type)


class BfLayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and state dict) that keeps bf16 activations bf16 under autocast. Autocast runs
    layer_norm in fp32: for DP3's per-point encoder (256 x 3 x 1024 points x up to 256 channels a batch) that
    doubles the memory traffic and adds a cast before and after. The kernel accumulates in fp32 either way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _low_precision(x):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            w = self.weight.to(x.dtype) if self.weight is not None else None
            b = self.bias.to(x.dtype) if self.bias is not None else None
            return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


class BfGroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state dict); under autocast, computed as a layer norm over each group's
    (channels x length) row in bf16, then the per-channel affine. PyTorch's GroupNorm kernels run in fp32 under
    autocast and are slow for DP3's 8/4/2-step sequences (their backward was the largest kernel of a step)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _low_precision(x) or x.dim() != 3:
            return super().forward(x)
        b, c, length = x.shape
        with torch.autocast(x.device.type, enabled=False):
            y = F.layer_norm(x.reshape(b, self.num_groups, (c // self.num_groups) * length),
                             ((c // self.num_groups) * length,), eps=self.eps).reshape(b, c, length)
            if self.affine:
                y = torch.addcmul(self.bias.to(x.dtype)[:, None], y, self.weight.to(x.dtype)[:, None])
            return y


class GemmConv1d(nn.Conv1d):
    """nn.Conv1d (same parameters, same state dict) computed as one matrix product over unfolded windows.

    DP3's sequences are 8, 4 and 2 steps long with 512-2048 channels: cuDNN's convolution kernels are slow at
    such lengths, a GEMM over (batch * length) rows is not."""

    enabled = True  # class-wide switch, for benchmarks against cuDNN

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, stride, pad = self.kernel_size[0], self.stride[0], self.padding[0]
        if not GemmConv1d.enabled or isinstance(pad, str) or self.dilation[0] != 1 or self.groups != 1:
            return super().forward(x)
        if pad:
            x = F.pad(x, (pad, pad))
        cols = x.unfold(2, k, stride)  # (B, C, L', k)
        b, c, length, _ = cols.shape
        cols = cols.permute(0, 2, 1, 3).reshape(b * length, c * k)
        out = F.linear(cols, self.weight.reshape(self.out_channels, c * k), self.bias)
        return out.reshape(b, length, self.out_channels).transpose(1, 2)


class Conv1dBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(GemmConv1d(cin, cout, kernel, padding=kernel // 2), BfGroupNorm(groups, cout), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        return out


class CondResBlock(nn.Module):
    """Two conv blocks; FiLM (per-channel scale and bias from the condition) after the first."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.out_channels = cout
        self.blocks = nn.ModuleList([Conv1dBlock(cin, cout, kernel, groups), Conv1dBlock(cout, cout, kernel, groups)])
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, cout * 2))
        self.residual_conv: nn.Module = GemmConv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.blocks[0](x)
        film = self.cond_encoder(cond).reshape(cond.shape[0], 2, self.out_channels, 1)
        out = film[:, 0] * out + film[:, 1]
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class Downsample1d(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = GemmConv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class Upsample1d(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


class ConditionalUnet1D(nn.Module):
    """The noise-prediction U-Net over the action sequence, FiLM-conditioned on step embedding + observations."""

    def __init__(self, input_dim: int, global_cond_dim: int, step_embed: int, down_dims: tuple[int, ...],
                 kernel: int, groups: int) -> None:
        super().__init__()
        dims = [input_dim, *down_dims]
        cond = step_embed + global_cond_dim
        self.diffusion_step_encoder = nn.Sequential(SinusoidalPosEmb(step_embed), nn.Linear(step_embed, step_embed * 4),
                                                    nn.Mish(), nn.Linear(step_embed * 4, step_embed))
        pairs = list(itertools.pairwise(dims))
        mid = dims[-1]
        self.mid_modules = nn.ModuleList([CondResBlock(mid, mid, cond, kernel, groups) for _ in range(2)])
        self.down_modules = nn.ModuleList([
            nn.ModuleList([CondResBlock(a, b, cond, kernel, groups), CondResBlock(b, b, cond, kernel, groups),
                           Downsample1d(b) if i < len(pairs) - 1 else nn.Identity()])
            for i, (a, b) in enumerate(pairs)])
        self.up_modules = nn.ModuleList([
            nn.ModuleList([CondResBlock(b * 2, a, cond, kernel, groups), CondResBlock(a, a, cond, kernel, groups),
                           Upsample1d(a)])
            for a, b in reversed(pairs[1:])])
        self.final_conv = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel), GemmConv1d(down_dims[0], input_dim, 1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """(B,T,A) noisy actions, (B,) steps, (B,G) condition -> (B,T,A)."""
        x = sample.transpose(1, 2)
        t = timestep.expand(sample.shape[0]) if timestep.ndim else timestep[None].expand(sample.shape[0])
        steps = self.diffusion_step_encoder[0](t).to(sample.dtype)  # sinusoids in the weights' precision
        cond = torch.cat([self.diffusion_step_encoder[1:](steps), global_cond], dim=-1)
        skips = []
        for stage in self.down_modules:
            res1, res2, down = list(stage)  # type: ignore[call-overload]
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for block in self.mid_modules:
            x = block(x, cond)
        for stage in self.up_modules:
            res1, res2, up = list(stage)  # type: ignore[call-overload]
            x = up(res2(res1(torch.cat((x, skips.pop()), dim=1), cond), cond))
        out: torch.Tensor = self.final_conv(x)
        return out.transpose(1, 2)


class LinearNormalizer(nn.Module):
    """Min-max ('limits') normalisation to [-1, 1] per last-dim channel, fitted on the training data.

    Parameters live at `params_dict.<key>.{scale,offset,input_stats.{min,max,mean,std}}`, as upstream's."""

    def __init__(self) -> None:
        super().__init__()
        self.params_dict = nn.ParameterDict()

    @torch.no_grad()
    def fit(self, data: dict[str, torch.Tensor], range_eps: float = 1e-4) -> None:
        for key, value in data.items():
            x = value.reshape(-1, value.shape[-1]).float()
            lo, hi = x.min(0).values, x.max(0).values
            span = hi - lo
            flat = span < range_eps
            span[flat] = 2.0
            scale = 2.0 / span
            offset = -1.0 - scale * lo
            offset[flat] = -lo[flat]
            stats = {"min": lo, "max": hi, "mean": x.mean(0), "std": x.std(0)}
            self.params_dict[key] = nn.ParameterDict({
                "scale": nn.Parameter(scale, requires_grad=False), "offset": nn.Parameter(offset, requires_grad=False),
                "input_stats": nn.ParameterDict({k: nn.Parameter(v, requires_grad=False) for k, v in stats.items()})})

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        p = self.params_dict[key]
        out: torch.Tensor = x * p["scale"] + p["offset"]
        return out

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        p = self.params_dict[key]
        out: torch.Tensor = (x - p["offset"]) / p["scale"]
        return out

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args: object,
                              **kwargs: object) -> None:
        # Rebuild the nested dicts from the keys, so an unfitted normalizer can load a checkpoint (as upstream).
        for full, value in state_dict.items():
            if not full.startswith(prefix + "params_dict."):
                continue
            parts = full[len(prefix + "params_dict."):].split(".")
            node: nn.ParameterDict = self.params_dict
            for part in parts[:-1]:
                if part not in node:
                    node[part] = nn.ParameterDict()
                node = node[part]
            node[parts[-1]] = nn.Parameter(value.clone(), requires_grad=False)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MaskGenerator(nn.Module):
    """Upstream's LowdimMaskGenerator holds no weights, but as a ModuleAttrMixin it carries a zero-size
    `_dummy_variable` that is in every upstream state dict (`mask_generator._dummy_variable`): kept so strict
    loads work both ways. With global conditioning its mask is all False, so nothing here computes it."""

    def __init__(self) -> None:
        super().__init__()
        self._dummy_variable = nn.Parameter(torch.empty(0), requires_grad=False)


class DP3(nn.Module):
    """Observation encoder + conditional U-Net + normaliser, with a DDIM noise scheduler (not a module)."""

    def __init__(self, cfg: Dp3Config) -> None:
        super().__init__()
        from diffusers import DDIMScheduler

        self.cfg = cfg
        # upstream's ModuleAttrMixin keeps one; frozen here so DDP does not wait for a gradient it never gets
        self._dummy_variable = nn.Parameter(torch.empty(0), requires_grad=False)
        self.obs_encoder = Dp3Encoder(cfg)
        self.model = ConditionalUnet1D(cfg.action_dim, cfg.obs_feature_dim * cfg.n_obs_steps,
                                       cfg.diffusion_step_embed_dim, cfg.down_dims, cfg.kernel_size, cfg.n_groups)
        self.mask_generator = MaskGenerator()  # registered here: upstream's parameter order, for optimizer exports
        self.normalizer = LinearNormalizer()
        self.noise_scheduler = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=0.0001,
                                             beta_end=0.02, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                             set_alpha_to_one=True, steps_offset=0, prediction_type="sample")
        # The scheduler's alphas as a buffer that follows the model's device (not saved: derived from the config).
        self.register_buffer("_alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone().float(), persistent=False)
        self._register_load_state_dict_pre_hook(_add_mask_generator_key)  # type: ignore[no-untyped-call]

    def global_cond(self, point_cloud: torch.Tensor, agent_pos: torch.Tensor) -> torch.Tensor:
        """(B,To,P,C) and (B,To,D), normalised -> (B, To * 192)."""
        b, to = agent_pos.shape[:2]
        pc = point_cloud if self.cfg.use_pc_color else point_cloud[..., :3]
        feat = self.obs_encoder(pc.reshape(b * to, *pc.shape[2:]), agent_pos.reshape(b * to, -1))
        return feat.reshape(b, -1)

    def forward(self, point_cloud: torch.Tensor, agent_pos: torch.Tensor, action: torch.Tensor, noise: torch.Tensor,
                steps: torch.Tensor) -> torch.Tensor:
        """The training loss given drawn noise (so DistributedDataParallel can wrap the policy, and a captured step
        can feed the noise drawn outside its graph)."""
        return self.loss_given_noise(point_cloud, agent_pos, action, noise, steps)

    def compute_loss(self, point_cloud: torch.Tensor, agent_pos: torch.Tensor, action: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising loss on one batch of raw windows: (B,T,P,C), (B,T,D), (B,T,A)."""
        noise, steps = self.draw_noise(action, generator)
        return self.loss_given_noise(point_cloud, agent_pos, action, noise, steps)

    def draw_noise(self, action: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise and diffusion steps of one batch (drawn apart so a CUDA graph can replay the rest)."""
        noise = torch.randn(action.shape, generator=generator, device=action.device, dtype=torch.float32)
        steps = torch.randint(0, self.cfg.num_train_timesteps, (action.shape[0],), generator=generator,
                              device=action.device)
        return noise, steps

    def loss_given_noise(self, point_cloud: torch.Tensor, agent_pos: torch.Tensor, action: torch.Tensor,
                         noise: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        to = self.cfg.n_obs_steps
        npc = self.normalizer.normalize("point_cloud", point_cloud[:, :to])
        npos = self.normalizer.normalize("agent_pos", agent_pos[:, :to])
        target = self.normalizer.normalize("action", action)
        cond = self.global_cond(npc, npos)
        alphas: torch.Tensor = self._alphas_cumprod  # type: ignore[assignment]  # DDPM forward process (add_noise)
        a = alphas[steps].reshape(-1, 1, 1)
        noisy = a.sqrt() * target + (1 - a).sqrt() * noise.to(target.dtype)
        pred = self.model(noisy, steps, cond)
        return F.mse_loss(pred.float(), target.float())  # prediction_type "sample": the target is the clean actions

    @torch.no_grad()
    def predict_action(self, point_cloud: torch.Tensor, agent_pos: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,To,P,C), (B,To,D) raw observations -> (B, n_action_steps, A) raw actions."""
        cfg = self.cfg
        cond = self.global_cond(self.normalizer.normalize("point_cloud", point_cloud),
                                self.normalizer.normalize("agent_pos", agent_pos))
        traj = torch.randn((agent_pos.shape[0], cfg.horizon, cfg.action_dim), generator=generator,
                           device=agent_pos.device, dtype=cond.dtype)
        sched: Any = self.noise_scheduler  # diffusers' scheduler classes are not typed
        sched.set_timesteps(cfg.num_inference_steps)
        for t in sched.timesteps:
            out = self.model(traj, t.to(traj.device), cond)
            traj = sched.step(out, t, traj, generator=generator).prev_sample
        actions = self.normalizer.unnormalize("action", traj)
        start = cfg.n_obs_steps - 1
        return actions[:, start:start + cfg.n_action_steps]


def _add_mask_generator_key(state_dict: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
    """Checkpoints written before the key existed (it holds nothing) still load strictly."""
    state_dict.setdefault(prefix + "mask_generator._dummy_variable", torch.empty(0))
