"""policies/rdt/siglip.py against transformers' SigLIP vision model: the same tokens from the same folder."""

from __future__ import annotations

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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_gelu_product_on_cuda_equals_the_plain_two(tmp_path: Path) -> None:
    """CUDA, bf16: fc1 with the GELU in cuBLASLt's epilogue gives the plain product-then-tanh-GELU's tokens."""
    reference(tmp_path, full=False)
    enc = siglip.load(tmp_path, torch.device("cuda"), torch.bfloat16)
    pixels = torch.randn(8, 3, 42, 42, device="cuda", dtype=torch.bfloat16)
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
