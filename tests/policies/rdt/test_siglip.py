"""policies/rdt/siglip.py against transformers' SigLIP vision model: the same tokens from the same folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from policies.rdt import siglip

CFG = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
       "image_size": 42, "patch_size": 14}


def reference(folder: Path, full: bool) -> torch.nn.Module:
    """transformers' model with random weights, saved as a SiglipVisionModel, or as a SiglipModel (text + vision)."""
    from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    vision = SiglipVisionConfig(**CFG)
    if full:
        both = SiglipModel(SiglipConfig(vision_config=vision.to_dict(), text_config={
            "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}))
        for p in both.parameters():  # layer norms start at 1 / 0: make every weight matter
            torch.nn.init.normal_(p, std=0.2)
        both.save_pretrained(str(folder))
        return both.vision_model.eval()
    model = SiglipVisionModel(vision)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    model.save_pretrained(str(folder))
    return model.eval()


@pytest.mark.parametrize("full", [False, True], ids=["vision-model", "text-and-vision-model"])
def test_tokens_equal_transformers_last_hidden_state(tmp_path: Path, full: bool) -> None:
    ref = reference(tmp_path, full)
    ours = siglip.load(tmp_path, torch.device("cpu"), torch.float32)
    assert siglip.read_config(tmp_path)["hidden_size"] == 32
    pixels = torch.randn(3, 3, 42, 42, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(pixel_values=pixels).last_hidden_state
        got = ours(pixels)
    assert got.shape == (3, 9, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous()


def cuda_encoder(tmp_path: Path) -> tuple[siglip.SiglipEncoder, torch.Tensor]:
    """The reference's weights loaded by ours on CUDA in bf16, and a batch of 8 random images for it."""
    reference(tmp_path, full=False)
    enc = siglip.load(tmp_path, torch.device("cuda"), torch.bfloat16)
    return enc, torch.randn(8, 3, 42, 42, device="cuda", dtype=torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_gelu_product_on_cuda_equals_the_plain_two(tmp_path: Path) -> None:
    """CUDA, bf16: fc1 with the GELU in cuBLASLt's epilogue gives the plain product-then-tanh-GELU's tokens."""
    enc, pixels = cuda_encoder(tmp_path)
    layer = enc.layers[0]
    x = torch.randn(8, 9, 32, device="cuda", dtype=torch.bfloat16)
    plain = torch.nn.functional.gelu(layer.fc1(x), approximate="tanh")
    torch.testing.assert_close(layer.fc1_gelu(x), plain, rtol=2e-2, atol=2e-2)
    with torch.no_grad():
        fused = enc(pixels)
        layer_type = type(layer)
        saved = layer_type.fc1_gelu
        layer_type.fc1_gelu = layer_type.fc1_then_gelu  # type: ignore[method-assign]
        try:
            unfused = enc(pixels)
        finally:
            layer_type.fc1_gelu = saved  # type: ignore[method-assign]
    torch.testing.assert_close(fused.float(), unfused.float(), rtol=5e-2, atol=5e-2)


def test_add_layer_norm_is_the_eager_pair_off_the_gpu() -> None:
    from policies.rdt.add_norm import add_layer_norm, fusable

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(32, eps=1e-6)
    x, h = torch.randn(3, 9, 32), torch.randn(3, 9, 32)
    assert not fusable(x, h, norm)
    s, y = add_layer_norm(x, h, norm, fused=True)
    assert torch.equal(s, x + h) and torch.equal(y, norm(x + h))


@pytest.fixture
def no_c_compiler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine where Triton could not build its launcher: no C compiler on PATH (asked once a process: reset)."""
    from policies import cuda_graph

    monkeypatch.setattr(cuda_graph.shutil, "which", lambda name: None)
    cuda_graph.kernels_unavailable.cache_clear()
    yield
    cuda_graph.kernels_unavailable.cache_clear()


def test_no_c_compiler_is_a_reason_not_to_build_the_kernel(no_c_compiler: None) -> None:
    from policies.cuda_graph import kernels_unavailable

    reason = kernels_unavailable()
    assert reason is not None and ("C compiler" in reason or "triton" in reason)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_without_a_c_compiler_the_encoder_runs_the_eager_pair_on_cuda(tmp_path: Path, no_c_compiler: None) -> None:
    from policies.rdt.add_norm import fusable

    enc, pixels = cuda_encoder(tmp_path)
    x = torch.randn(2, 9, enc.hidden_size, device="cuda", dtype=torch.bfloat16)
    assert enc.fused_add_norm and not fusable(x, x.clone(), enc.post)
    with torch.no_grad():
        tokens = enc(pixels)
    assert tokens.shape == (8, enc.num_patches, enc.hidden_size) and bool(tokens.isfinite().all())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(8, 729, 1152), (3, 9, 32)])
def test_fused_add_layer_norm_on_cuda_matches_the_eager_pair(shape: tuple[int, ...]) -> None:
    """bf16: the same residual sum bit for bit (both round the fp32 sum to nearest even), the normalised rows within
    bf16 rounding (the statistics are summed in another order)."""
    from policies.rdt.add_norm import add_layer_norm, fusable

    torch.manual_seed(0)
    with torch.device("cuda"):
        norm = torch.nn.LayerNorm(shape[-1], eps=1e-6).to(torch.bfloat16).requires_grad_(False)
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
        x = (torch.randn(shape) * 3 + 1).to(torch.bfloat16)
        h = torch.randn(shape, dtype=torch.bfloat16)
    assert fusable(x, h, norm)
    s, y = add_layer_norm(x, h, norm)
    ref_s, ref_y = add_layer_norm(x, h, norm, fused=False)
    assert torch.equal(s, ref_s)
    torch.testing.assert_close(y.float(), ref_y.float(), rtol=1.6e-2, atol=1.6e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_encoder_with_fused_add_norm_on_cuda_gives_the_same_tokens(tmp_path: Path) -> None:
    enc, pixels = cuda_encoder(tmp_path)
    assert enc.fused_add_norm  # the default
    with torch.no_grad():
        fused = enc(pixels)
        enc.fused_add_norm = False
        plain = enc(pixels)
    torch.testing.assert_close(fused.float(), plain.float(), rtol=5e-2, atol=5e-2)
