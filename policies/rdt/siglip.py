"""SigLIP's vision encoder as RDT uses it: patch tokens after the final LayerNorm (transformers'
`SiglipVisionModel(...).last_hidden_state`, which upstream's SiglipVisionTower selects), read from the same local
folder (config.json + safetensors) and equal to transformers' output to float tolerance (tested).

What it leaves out and does differently, for speed: the attention-pooling head (its output is never used), the
query/key/value projections fused into one matrix product, attention through `scaled_dot_product_attention` on
the projection's strided views (no layout copies), a contiguous residual stream (the patch convolution's layout
would make every layer transpose it), fc1's GELU in cuBLASLt's epilogue on CUDA, no masks or output dictionaries
(tests/policies/rdt/test_siglip.py checks the output against transformers'). Training runs it eager, which is
faster on a batch of ~100 images than compiled (docs/rdt.md); inference may compile it before CUDA-graph capture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from policies.rdt.add_norm import add_layer_norm

_ACTS = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}


class _Layer(nn.Module):
    """One encoder layer's weights and its two branches; SiglipEncoder.forward adds each branch back to the residual
    stream together with the LayerNorm that follows it."""

    def __init__(self, d: int, heads: int, inter: int, eps: float, approximate: str) -> None:
        super().__init__()
        self.heads, self.approximate = heads, approximate
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, inter), nn.Linear(inter, d)

    def attend(self, normed: torch.Tensor) -> torch.Tensor:
        """The attention branch on the normalised residual stream (before it is added back)."""
        b, n, d = normed.shape
        q, k, v = self.qkv(normed).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)
        out: torch.Tensor = self.out(a.transpose(1, 2).reshape(b, n, d))
        return out

    def mlp(self, normed: torch.Tensor) -> torch.Tensor:
        """The MLP branch on the normalised residual stream (before it is added back)."""
        out: torch.Tensor = self.fc2(self.fc1_gelu(normed))
        return out

    def fc1_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(fc1(x)). On CUDA with SigLIP's tanh GELU, one cuBLASLt product with the GELU in its epilogue
        (`torch._addmm_activation`, whose CUDA GELU is the tanh form), so the 4304-wide hidden activation is written
        once and never re-read for the GELU; elsewhere (CPU: that call's GELU is the exact form) fc1_then_gelu."""
        if x.is_cuda and self.approximate == "tanh" and not torch.compiler.is_compiling():
            flat = torch._addmm_activation(self.fc1.bias, x.reshape(-1, x.shape[-1]), self.fc1.weight.t(), use_gelu=True)
            return flat.view(*x.shape[:-1], -1)
        return self.fc1_then_gelu(x)

    def fc1_then_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(fc1(x)) as two kernels: the product, then the GELU (the fused product's baseline, too)."""
        return F.gelu(self.fc1(x), approximate=self.approximate)


class SiglipEncoder(nn.Module):
    """(N, 3, S, S) normalised pixels -> (N, (S/patch)^2, hidden) patch tokens.

    Each residual add runs with the LayerNorm after it (the next branch's, or the final one) through
    policies.rdt.add_norm: one Triton kernel where it applies (`fused_add_norm`, the default: 137.4 -> 129.7 ms for
    96 images on an H200, docs/rdt.md), else the two eager operations."""

    fused_add_norm = True

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d, p = int(cfg["hidden_size"]), int(cfg["patch_size"])
        self.hidden_size = d
        self.num_patches = (int(cfg["image_size"]) // p) ** 2
        eps = float(cfg.get("layer_norm_eps", 1e-6))
        act = str(cfg.get("hidden_act", "gelu_pytorch_tanh"))
        if act not in _ACTS:
            msg = f"SigLIP hidden_act {act!r} is not supported (known: {', '.join(_ACTS)})"
            raise ValueError(msg)
        self.patch = nn.Conv2d(int(cfg.get("num_channels", 3)), d, p, stride=p)
        self.pos = nn.Parameter(torch.zeros(self.num_patches, d))
        self.layers = nn.ModuleList([_Layer(d, int(cfg["num_attention_heads"]), int(cfg["intermediate_size"]), eps,
                                            _ACTS[act]) for _ in range(int(cfg["num_hidden_layers"]))])
        self.post = nn.LayerNorm(d, eps=eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # contiguous (N, tokens, hidden): the convolution's (N, hidden, tokens) layout would otherwise carry through
        # every residual add, and each layer would transpose the residual stream again (~20 ms a 96-image batch)
        x = (self.patch(pixels).flatten(2).transpose(1, 2) + self.pos).contiguous()
        layers = [cast(_Layer, layer) for layer in self.layers]
        if not layers:
            return self.post(x)  # type: ignore[no-any-return]
        normed: torch.Tensor = layers[0].ln1(x)
        for i, layer in enumerate(layers):
            x, normed = add_layer_norm(x, layer.attend(normed), layer.ln2, self.fused_add_norm)
            after = layers[i + 1].ln1 if i + 1 < len(layers) else self.post
            x, normed = add_layer_norm(x, layer.mlp(normed), after, self.fused_add_norm)
        return normed

    def load_hf(self, state: dict[str, torch.Tensor]) -> None:
        """Load transformers' SigLIP weights: a SiglipVisionModel's, or the `vision_model.*` part of a SiglipModel's."""
        prefixed = any(k.startswith("vision_model.") for k in state)  # a SiglipModel (text + vision) checkpoint
        src = {k.removeprefix("vision_model."): v for k, v in state.items()
               if k.startswith("vision_model.") or not prefixed}
        mine: dict[str, torch.Tensor] = {
            "patch.weight": src["embeddings.patch_embedding.weight"], "patch.bias": src["embeddings.patch_embedding.bias"],
            "pos": src["embeddings.position_embedding.weight"],
            "post.weight": src["post_layernorm.weight"], "post.bias": src["post_layernorm.bias"]}
        for i in range(len(self.layers)):
            h = f"encoder.layers.{i}."
            for part in ("weight", "bias"):
                mine[f"layers.{i}.qkv.{part}"] = torch.cat([src[f"{h}self_attn.{n}_proj.{part}"] for n in "qkv"])
                for theirs, ours in (("self_attn.out_proj", "out"), ("layer_norm1", "ln1"), ("layer_norm2", "ln2"),
                                     ("mlp.fc1", "fc1"), ("mlp.fc2", "fc2")):
                    mine[f"layers.{i}.{ours}.{part}"] = src[f"{h}{theirs}.{part}"]
        self.load_state_dict(mine, strict=True)


def read_config(folder: Path) -> dict[str, Any]:
    """The vision part of a SigLIP config.json (a SiglipModel's `vision_config`, or a SiglipVisionModel's own)."""
    cfg = json.loads((folder / "config.json").read_text())
    vision: dict[str, Any] = cfg.get("vision_config", cfg)
    defaults = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                "image_size": 224, "patch_size": 16}  # transformers' SiglipVisionConfig defaults
    return {**defaults, **vision}


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's weights: the shards an index names, else the one file
    policies.rdt.weights.read_state_dict finds (model.safetensors or pytorch_model.bin)."""
    from safetensors.torch import load_file

    from policies.rdt.weights import read_state_dict

    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return read_state_dict(folder)
    state: dict[str, torch.Tensor] = {}
    for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        if not (folder / name).is_file():
            msg = f"{folder}: {name} missing (the shards {index.name} names)"
            raise FileNotFoundError(msg)
        state.update(load_file(str(folder / name)))
    return state


def load(folder: Path, device: torch.device, dtype: torch.dtype) -> SiglipEncoder:
    enc = SiglipEncoder(read_config(folder))
    enc.load_hf(read_weights(folder))
    return enc.to(device, dtype).eval().requires_grad_(False)
