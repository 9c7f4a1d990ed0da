"""RDT (Liu et al., ICLR 2025): a diffusion transformer over a 128-d unified state/action space, conditioned on
T5 language tokens and SigLIP image tokens through alternating cross-attention.

Module and parameter names follow thu-ml/RoboticsDiffusionTransformer's RDTRunner (`model.*`, `lang_adaptor.*`,
`img_adaptor.*`, `state_adaptor.*`), so the official rdt-1b weights load strictly. Written from upstream's
published architecture; no upstream code is copied. Sizes come from RdtConfig (tests use a tiny one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from policies.rdt import decode_attention as decode
from policies.rdt import kv_place
from policies.rdt import norm_attention as fused_attention
from policies.rdt.linear_gelu import linear_gelu


@dataclass(frozen=True)
class RdtConfig:
    hidden_size: int = 2048
    depth: int = 28
    num_heads: int = 32
    horizon: int = 64  # action chunk
    action_dim: int = 128  # the unified state/action vector
    state_token_dim: int = 128
    lang_token_dim: int = 4096  # T5-v1.1-XXL
    img_token_dim: int = 1152  # SigLIP so400m-patch14-384
    max_lang_cond_len: int = 1024
    img_cond_len: int = 4374  # 2 history frames x 3 cameras x 729 patches
    lang_adaptor_depth: int = 2  # mlp2x_gelu
    img_adaptor_depth: int = 2
    state_adaptor_depth: int = 3  # mlp3x_gelu
    num_train_timesteps: int = 1000
    num_inference_timesteps: int = 5

    @staticmethod
    def tiny() -> RdtConfig:
        return RdtConfig(hidden_size=64, depth=2, num_heads=4, horizon=8, lang_token_dim=32, img_token_dim=16,
                         max_lang_cond_len=16, img_cond_len=12)


class RmsNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out)
        self.gelu_epilogue = False  # fc1's GELU inside its product (linear_gelu.py; act on CUDA)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gelu_epilogue:
            return self.fc2(linear_gelu(x, self.fc1.weight, self.fc1.bias))
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with RMS-normalised queries and keys (timm's Attention layout)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.fused_norms = False  # inference, set by use_norm_attention
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm, self.k_norm = RmsNorm(self.head_dim), RmsNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        if self.fused_norms and fused_attention.supported(x, self.head_dim):
            # the norms and the attention in one kernel, on views of the product (B, n, H, D each)
            q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).unbind(2)
            out = fused_attention.norm_attention(q, k, v, self.q_norm.weight, self.k_norm.weight, None,
                                                 self.q_norm.eps)
            return self.proj(out.reshape(b, n, c))
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def split_key_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, parts: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with the keys cut into `parts` equal consecutive chunks, each attended as its own
    batch entry, the results weighed by their log-sum-exps: the same attention to float tolerance (flash-decoding).
    For few queries over many keys: RDT's 67 tokens (step, frequency, state, 64 actions) over 4,374 image tokens give
    a flash kernel 32 heads x 2 query tiles, each walking every key, on a GPU of 132 multiprocessors (48 us an image
    block at batch 1 on an H200); split, the whole GPU reads the keys at once. The chunks are views of keys_values's
    (B, L, H, D) storage."""
    b, h, n, d = q.shape
    length = k.shape[2]

    def chunks(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(b * parts, length // parts, h, d).transpose(1, 2)

    qs = q[:, None].expand(b, parts, h, n, d).reshape(b * parts, h, n, d)
    attend = (torch.ops.aten._scaled_dot_product_flash_attention if q.is_cuda
              else torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
    out, lse = attend(qs, chunks(k), chunks(v))[:2]
    weight = torch.softmax(lse.float().unflatten(0, (b, parts)), dim=1)  # (B, parts, H, n)
    return (out.float().unflatten(0, (b, parts)) * weight[..., None]).sum(1).to(q.dtype)


KeptKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""One image block's kept (B, L, H, D) pre-norm keys, keys and values (Rdt.image_kv_slots)."""


class SlotPlan(NamedTuple):
    """Which image slots a call writes: `compute` from their tokens, `moved` from the kept ones of the slot `shift`
    later (the same frame, one history step older); both sorted."""

    compute: tuple[int, ...]
    moved: tuple[int, ...]
    shift: int


class CrossAttention(nn.Module):
    """Queries from the action tokens, keys and values from a condition (language or image tokens).

    Inference, set by `split_image_keys`, with no mask: `decode_parts` > 0 attends through decode_attention's Triton
    kernels with the keys in that many parts; else `key_parts` > 1 through split_key_attention in that many parts when
    the keys divide evenly; both 0, one attention (training)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.key_parts = self.decode_parts = 0
        self.fused_norms = False  # inference, set by use_norm_attention
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.q_norm, self.k_norm = RmsNorm(self.head_dim), RmsNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def keys_values(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised keys and values of a condition: fixed across denoising steps, so sampling computes them once.
        Keys and values come from the two halves of `kv` as two products, so each is contiguous and the backward
        pass writes no stacked (B, L, 2, H, D) gradient (4374 image tokens make that the largest copy of the step)."""
        b, length, _ = cond.shape
        (wk, bk), (wv, bv) = self.kv_halves()
        k = F.linear(cond, wk, bk).view(b, length, self.heads, self.head_dim).transpose(1, 2)
        v = F.linear(cond, wv, bv).view(b, length, self.heads, self.head_dim).transpose(1, 2)
        return self.k_norm(k), v

    def kv_halves(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias) of the keys' and of the values' half of `kv`."""
        d = self.heads * self.head_dim
        w, bias = self.kv.weight, self.kv.bias
        return (w[:d], bias[:d]), (w[d:], bias[d:])

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        """Attend to a condition through its keys_values."""
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = kv
        length = k.shape[2]
        if self.decode_parts and mask is None:
            # (B, n, H, D) from two Triton kernels, the keys walked in parts across the whole GPU, the queries' norm
            # in the first
            out = decode.decode_attention(q, k, v, self.decode_parts, self.q_norm.weight, self.q_norm.eps)
            return self.proj(out.reshape(b, n, c))
        if (self.fused_norms and length <= fused_attention.MAX_KEYS and fused_attention.supported(x, self.head_dim)
                and (mask is None or mask.dtype == torch.bool)):
            # the queries' norm and the attention in one kernel (the language blocks' few keys)
            out = fused_attention.norm_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 self.q_norm.weight, None,
                                                 mask.reshape(-1, length) if mask is not None else None, self.q_norm.eps)
            return self.proj(out.reshape(b, n, c))
        if self.key_parts > 1 and mask is None and length % self.key_parts == 0:
            out = split_key_attention(self.q_norm(q), k, v, self.key_parts)
        else:
            attn_mask = mask.reshape(-1, 1, 1, length).expand(b, -1, n, -1) if mask is not None else None
            out = F.scaled_dot_product_attention(self.q_norm(q), k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class RdtBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = RmsNorm(dim), SelfAttention(dim, heads)
        self.norm2, self.cross_attn = RmsNorm(dim), CrossAttention(dim, heads)
        self.norm3, self.ffn = RmsNorm(dim), Mlp(dim, dim, dim)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
                ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), kv, mask)
        return x + self.ffn(self.norm3(x))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.norm_final = RmsNorm(dim)
        self.ffn_final = Mlp(dim, dim, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_final(self.norm_final(x))


class TimestepEmbedder(nn.Module):
    """Sinusoidal features (256) of a scalar -> MLP: the diffusion step, and the control frequency."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        first = cast(nn.Linear, self.mlp[0])
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(first.weight.dtype)
        return self.mlp(emb)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", positions.astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def token_pos_embed(dim: int, horizon: int) -> np.ndarray:
    """[timestep; ctrl_freq; state; action x horizon]: modality index in the first half, position in the second."""
    lens = (1, 1, 1, horizon)
    modality = sincos_1d(dim // 2, np.arange(len(lens)))
    rows = []
    for m, n in enumerate(lens):
        block = np.zeros((n, dim))
        block[:, dim // 2:] = sincos_1d(dim // 2, np.arange(n))
        block[:, : dim // 2] += modality[m]
        rows.append(block)
    return np.concatenate(rows)


class Rdt(nn.Module):
    """The diffusion transformer: blocks alternate cross-attention to language (even) and image (odd) tokens."""

    def __init__(self, cfg: RdtConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.horizon = cfg.horizon
        self.t_embedder, self.freq_embedder = TimestepEmbedder(d), TimestepEmbedder(d)
        self.x_pos_embed = nn.Parameter(torch.tensor(token_pos_embed(d, cfg.horizon), dtype=torch.float32)[None])
        self.lang_cond_pos_embed = nn.Parameter(
            torch.tensor(sincos_1d(d, np.arange(cfg.max_lang_cond_len)), dtype=torch.float32)[None])
        self.img_cond_pos_embed = nn.Parameter(torch.tensor(sincos_1d(d, np.arange(cfg.img_cond_len)), dtype=torch.float32)[None])
        self.blocks = nn.ModuleList([RdtBlock(d, cfg.num_heads) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(d, cfg.action_dim)

    def condition_kv(self, lang: torch.Tensor, img: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every block's cross-attention keys/values (language for even blocks, images for odd ones)."""
        return interleave(self.lang_kv(lang), self.image_kv(img))

    def lang_kv(self, lang: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The language blocks' (even) keys/values of adapted language tokens."""
        cond = lang + self.lang_cond_pos_embed[:, : lang.shape[1]]
        return [cast(RdtBlock, b).cross_attn.keys_values(cond) for b in list(self.blocks)[0::2]]

    def image_kv(self, img: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The image blocks' (odd) keys/values of adapted image tokens."""
        cond = img + self.img_cond_pos_embed
        return [cast(RdtBlock, b).cross_attn.keys_values(cond) for b in list(self.blocks)[1::2]]

    def image_kv_slots(self, img: torch.Tensor, plan: SlotPlan, per_image: int, kept: list[KeptKV],
                       deltas: list[tuple[torch.Tensor, torch.Tensor]] | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """image_kv for a policy that keeps the image blocks' keys/values across calls (kv_place.py says how).
        `img`: the adapted tokens of the slots `plan.compute` (each `per_image` tokens, in slot order), whose
        products are written into `kept`; the slots `plan.moved` take the kept ones of the slot `plan.shift` later
        plus `deltas` (slot_deltas, by the older slot); every other slot's are kept as they are. Returns the image
        blocks' (B, H, L, D) keys/values as views of `kept`."""
        pos = self.img_cond_pos_embed[0]
        runs = _runs(plan.compute)
        cond = (img + torch.cat([pos[a * per_image:b * per_image] for a, b in runs])[None])[0] if runs else None
        # oldest first, at most `shift` slots a piece: a piece never reads what an earlier one wrote
        moves = [(a + i, min(b, a + i + plan.shift)) for a, b in _runs(plan.moved) for i in range(0, b - a, plan.shift)]
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, (block, (pre, k, v)) in enumerate(zip(list(self.blocks)[1::2], kept, strict=True)):
            attn = cast(RdtBlock, block).cross_attn
            w, eps = attn.k_norm.weight, attn.k_norm.eps
            for a, b in moves:
                dst, src = slice(a * per_image, b * per_image), slice((a + plan.shift) * per_image, (b + plan.shift) * per_image)
                dk, dv = cast(list[tuple[torch.Tensor, torch.Tensor]], deltas)[i]
                kv_place.move(pre[:, src], v[:, src], dk[:, dst], dv[:, dst], pre[:, dst] if b > plan.shift else None,
                              k[:, dst], v[:, dst], w, eps)
            if cond is not None:
                (wk, bk), (wv, bv) = attn.kv_halves()
                at = 0
                for a, b in runs:  # the products straight into the kept pre-norm keys and values, then the norm
                    rows, dst = cond[at:at + (b - a) * per_image], slice(a * per_image, b * per_image)
                    torch.addmm(bk, rows, wk.t(), out=pre[0, dst].view(len(rows), -1))
                    torch.addmm(bv, rows, wv.t(), out=v[0, dst].view(len(rows), -1))
                    kv_place.normalise(pre[:, dst], k[:, dst], w, eps)
                    at += len(rows)
            out.append((k.transpose(1, 2), v.transpose(1, 2)))
        return out

    @torch.no_grad()
    def slot_deltas(self, per_image: int, shift: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each image block, what moving a frame `shift` slots older adds to its pre-norm keys and its values:
        W (p_older - p_newer) for the keys' and the values' halves of the block's product (the bias cancels), as
        (1, L - shift * per_image, H, D) tensors indexed by the older slot, in the weights' dtype (fp32 products)."""
        pos = self.img_cond_pos_embed[0].float()
        step = pos[:-shift * per_image] - pos[shift * per_image:]
        out = []
        for block in list(self.blocks)[1::2]:
            attn = cast(RdtBlock, block).cross_attn
            shape = (1, step.shape[0], attn.heads, attn.head_dim)
            (wk, _), (wv, _) = attn.kv_halves()
            out.append(((step @ wk.float().t()).to(wk.dtype).view(shape), (step @ wv.float().t()).to(wv.dtype).view(shape)))
        return out

    def forward(self, x: torch.Tensor, freq: torch.Tensor, t: torch.Tensor, lang: torch.Tensor, img: torch.Tensor,
                lang_mask: torch.Tensor | None = None, img_mask: torch.Tensor | None = None,
                kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None, emb: torch.Tensor | None = None
                ) -> torch.Tensor:
        """x: (B, 1 + horizon, D) state and action tokens -> (B, horizon, action_dim). `kv`: condition_kv's cache;
        `emb`: step_embeddings' (then `t` and `freq` are not read)."""
        if emb is None:
            emb = self.step_embeddings(t, freq, x.shape[0])
        x = torch.cat([emb, x], dim=1) + self.x_pos_embed
        if kv is None:
            kv = self.condition_kv(lang, img)
        masks = (lang_mask, img_mask)
        for i, block in enumerate(self.blocks):
            x = block(x, kv[i], masks[i % 2])
        return self.final_layer(x)[:, -self.horizon:]

    def step_embeddings(self, t: torch.Tensor, freq: torch.Tensor, batch: int) -> torch.Tensor:
        """(B, 2, D): the embeddings of the diffusion step `t` and of the control frequency, the first two tokens."""
        te = self.t_embedder(t)[:, None]
        if te.shape[0] == 1:
            te = te.expand(batch, -1, -1)
        return torch.cat([te, self.freq_embedder(freq)[:, None]], dim=1)


def interleave(lang: list[tuple[torch.Tensor, torch.Tensor]], img: list[tuple[torch.Tensor, torch.Tensor]]
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every block's keys/values from the language blocks' (even) and the image blocks' (odd)."""
    return [kv for pair in zip(lang, img, strict=False) for kv in pair] + lang[len(img):] + img[len(lang):]


def _runs(slots: tuple[int, ...]) -> list[tuple[int, int]]:
    """Sorted slot indices as [start, end) runs of consecutive slots: (0, 1, 3) -> [(0, 2), (3, 4)]."""
    runs: list[tuple[int, int]] = []
    for s in slots:
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], s + 1)
        else:
            runs.append((s, s + 1))
    return runs


def split_keys_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether split_key_attention's CUDA kernel (flash attention) runs here: compute capability 8.0 or later
    (Ampere on), bf16 or fp16. Elsewhere act keeps one attention (an fp32 policy, or an older GPU, would fail)."""
    return (device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and torch.cuda.get_device_capability(device) >= (8, 0))


def split_image_keys(model: Rdt, parts: int, decode_parts: int = 0) -> None:
    """The image blocks' cross-attention in `parts` key chunks (CrossAttention.key_parts; 0: one attention), or
    through decode_attention in `decode_parts` (CrossAttention.decode_parts; 0: not)."""
    for block in list(model.blocks)[1::2]:
        attn = cast(RdtBlock, block).cross_attn
        attn.key_parts, attn.decode_parts = parts, decode_parts


def use_norm_attention(model: Rdt, on: bool) -> None:
    """Every block's self-attention and the cross-attention to at most norm_attention.MAX_KEYS tokens (language)
    through norm_attention's kernel, norms inside, where it applies (`fused_norms`; act at batch 1)."""
    for block in model.blocks:
        cast(RdtBlock, block).attn.fused_norms = cast(RdtBlock, block).cross_attn.fused_norms = on


def use_gelu_epilogue(model: Rdt, on: bool) -> None:
    """Every block's fc1 and GELU as one product with a GELU epilogue (Mlp.gelu_epilogue; inference only)."""
    for block in model.blocks:
        cast(RdtBlock, block).ffn.gelu_epilogue = on


def adaptor(depth: int, dim_in: int, dim_out: int) -> nn.Sequential:
    """mlp<depth>x_gelu: Linear, then (GELU, Linear) depth-1 times."""
    layers: list[nn.Module] = [nn.Linear(dim_in, dim_out)]
    for _ in range(depth - 1):
        layers += [nn.GELU(approximate="tanh"), nn.Linear(dim_out, dim_out)]
    return nn.Sequential(*layers)


class RdtRunner(nn.Module):
    """The model plus its condition adaptors (the official checkpoint's top-level modules)."""

    def __init__(self, cfg: RdtConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = Rdt(cfg)
        self.lang_adaptor = adaptor(cfg.lang_adaptor_depth, cfg.lang_token_dim, cfg.hidden_size)
        self.img_adaptor = adaptor(cfg.img_adaptor_depth, cfg.img_token_dim, cfg.hidden_size)
        # state + state indicator (the mask of which unified dims are present)
        self.state_adaptor = adaptor(cfg.state_adaptor_depth, cfg.state_token_dim * 2, cfg.hidden_size)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        """compute_loss: training engines (DeepSpeed, DDP) call the module itself."""
        return self.compute_loss(*args)

    def compute_loss(self, lang: torch.Tensor, lang_mask: torch.Tensor, img: torch.Tensor, state: torch.Tensor,
                     action: torch.Tensor, action_mask: torch.Tensor, ctrl_freq: torch.Tensor,
                     noise: torch.Tensor, steps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """DDPM training loss with sample prediction (the target is the clean action chunk)."""
        a = alphas_cumprod[steps].reshape(-1, 1, 1).to(action.dtype)
        noisy = a.sqrt() * action + (1 - a).sqrt() * noise
        traj = torch.cat([state, noisy], dim=1)
        traj = torch.cat([traj, action_mask.expand(-1, traj.shape[1], -1)], dim=2)
        pred = self.model(self.state_adaptor(traj), ctrl_freq, steps, self.lang_adaptor(lang), self.img_adaptor(img),
                          lang_mask=lang_mask)
        return F.mse_loss(pred.float(), action.float())


def schedulers(cfg: RdtConfig) -> tuple[object, object]:
    """DDPM for training and DPM-Solver++ for sampling (1000 steps, squaredcos_cap_v2, sample prediction)."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    train = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                          prediction_type="sample", clip_sample=False)
    sample = DPMSolverMultistepScheduler(num_train_timesteps=cfg.num_train_timesteps,
                                         beta_schedule="squaredcos_cap_v2", prediction_type="sample")
    return train, sample


def dpm_solver_coefficients(cfg: RdtConfig) -> list[tuple[int, float, float, float]]:
    """(timestep, a, b, c) per step of diffusers' DPMSolverMultistepScheduler as RDT configures it (dpmsolver++,
    order 2, midpoint, lower_order_final, final sigma 0, linspace spacing): x <- a x + b m_k + c m_(k-1), where m is
    the model's sample (x0) prediction. Equal to diffusers' step (tested against it), and free of Python state, so
    the whole sampling loop can be captured in one CUDA graph."""
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    ac = alphas.double().numpy()
    n = cfg.num_inference_timesteps
    steps = np.linspace(0, cfg.num_train_timesteps - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    sigmas = [float(np.sqrt((1 - ac[t]) / ac[t])) for t in steps] + [0.0]

    def alpha_sigma(sigma: float) -> tuple[float, float]:
        alpha = 1.0 / math.sqrt(sigma**2 + 1)
        return alpha, sigma * alpha

    def lam(sigma: float) -> float:
        alpha, sig = alpha_sigma(sigma)
        return math.log(alpha) - math.log(sig) if sig > 0 else math.inf

    out = []
    for k, t in enumerate(steps):
        a_t, s_t = alpha_sigma(sigmas[k + 1])
        _, s_s0 = alpha_sigma(sigmas[k])
        last = k == n - 1 and n < 15
        if s_t == 0.0:  # the final step to sigma 0 returns the prediction itself
            out.append((int(t), 0.0, 1.0, 0.0))
            continue
        h = lam(sigmas[k + 1]) - lam(sigmas[k])
        phi = a_t * (math.exp(-h) - 1.0)
        if k == 0 or last:
            out.append((int(t), s_t / s_s0, -phi, 0.0))
        else:
            r0 = (lam(sigmas[k]) - lam(sigmas[k - 1])) / h
            out.append((int(t), s_t / s_s0, -phi * (1 + 0.5 / r0), 0.5 * phi / r0))
    return out


def sample_chunk(runner: RdtRunner, coef: list[tuple[int, float, float, float]], lang: torch.Tensor,
                 lang_mask: torch.Tensor, img: torch.Tensor, state: torch.Tensor, action_mask: torch.Tensor,
                 ctrl_freq: torch.Tensor, noise: torch.Tensor, steps: list[torch.Tensor],
                 denoise: Callable[..., torch.Tensor] | None = None,
                 condition: Callable[..., list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
                 embeddings: list[torch.Tensor] | None = None) -> torch.Tensor:
    """(B, horizon, 128) unified actions from the DPM-Solver++ steps, absent dimensions zeroed by the mask: condition
    keys/values computed once, then the solver's linear updates (dpm_solver_coefficients), no scheduler object.
    `steps`: one (1,) long tensor per timestep (static, so a CUDA graph can hold them). `denoise`: the model's
    forward to call (a compiled one), default `runner.model`; `condition`: likewise for `condition_kv`;
    `embeddings`: each step's Rdt.step_embeddings, computed once by a caller that samples again and again (fixed by
    the weights, the timesteps and the control frequency), else computed by each step."""
    model = runner.model
    lang_c, img_c = runner.lang_adaptor(lang), runner.img_adaptor(img)
    kv = (condition if condition is not None else model.condition_kv)(lang_c, img_c)
    state_c = runner.state_adaptor(torch.cat([state, action_mask], dim=2))
    mask = action_mask.expand(-1, noise.shape[1], -1)
    x, prev = noise.float(), None
    step = denoise if denoise is not None else model  # not `or`: truth-testing a compiled module calls len()
    for i, ((_, a, b, c), t) in enumerate(zip(coef, steps, strict=True)):
        traj = torch.cat([state_c, runner.state_adaptor(torch.cat([x.to(state.dtype), mask], dim=2))], dim=1)
        # the step reads the images through kv only: an empty slice keeps its input shape the same for every
        # number of image tokens a caller passes (a compiled step is not compiled again)
        m = step(traj, ctrl_freq, t, lang_c, img_c[:, :0], lang_mask=lang_mask, kv=kv,
                 emb=embeddings[i] if embeddings is not None else None).float()
        x = a * x + b * m + (c * prev if prev is not None and c else 0.0)
        prev = m
    return (x * mask).to(state.dtype)
