"""few_rows.py: act's products of few rows as one split-K Triton kernel, and where the model uses it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from policies.rdt import few_rows
from policies.rdt.model import Linear, Mlp, RdtConfig, RdtRunner, use_few_rows


def test_use_few_rows_flags_the_blocks_and_final_layer_products_only() -> None:
    m = RdtRunner(RdtConfig.tiny())
    use_few_rows(m.model, True)
    flagged = {name for name, mod in m.named_modules() if isinstance(mod, Linear) and mod.few_rows}
    assert flagged and all(n.startswith(("model.blocks.", "model.final_layer.")) for n in flagged)
    # every product of a block is one: qkv, proj, q, proj, fc1, fc2 (kv is the conditions', computed once a call)
    assert {n.split(".", 3)[3] for n in flagged if n.startswith("model.blocks.0.")} == {
        "attn.qkv", "attn.proj", "cross_attn.q", "cross_attn.proj", "ffn.fc1", "ffn.fc2"}
    assert not any(isinstance(mod, Linear) and mod.few_rows for mod in m.lang_adaptor.modules())
    use_few_rows(m.model, False)
    assert not any(isinstance(mod, Linear) and mod.few_rows for mod in m.modules())


def test_where_the_kernel_does_not_apply_the_layers_compute_as_before() -> None:
    torch.manual_seed(0)
    mlp = Mlp(16, 32, 8)
    x = torch.randn(1, 67, 16)
    ref = mlp(x)
    for layer in (mlp.fc1, mlp.fc2):
        layer.few_rows = True
    assert not few_rows.applies(x, mlp.fc1.weight, mlp.fc1.bias)  # CPU
    torch.testing.assert_close(mlp(x), ref, rtol=0, atol=0)
    x16 = x.to(torch.bfloat16)
    assert not few_rows.applies(x16, mlp.fc1.weight, None)  # no bias
    if torch.cuda.is_available():
        cuda = x.cuda()
        assert not few_rows.applies(cuda, mlp.fc1.weight.cuda(), mlp.fc1.bias.cuda())  # fp32
        many = torch.randn(2, 67, 16, dtype=torch.bfloat16, device="cuda")  # 134 rows
        w, b = mlp.fc1.weight.cuda().bfloat16(), mlp.fc1.bias.cuda().bfloat16()
        assert not few_rows.applies(many, w, b) and few_rows.applies(many[:1], w, b)


def test_tiles_split_the_reduction_into_whole_steps() -> None:
    assert few_rows.tile_for(2048, 2048) == few_rows.DEFAULT
    t = few_rows.Tile(64, 3, 128, 4, 3)
    assert -(-2048 // t.split) == 683  # each split is then cut at whole K steps: 768, 768, 512


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, gelu: bool) -> torch.Tensor:
    y = F.linear(x.double(), w.double(), b.double())
    return F.gelu(y, approximate="tanh") if gelu else y


@pytest.mark.parametrize("tile", [few_rows.DEFAULT, few_rows.Tile(32, 1, 64, 4, 3), few_rows.Tile(128, 3, 128, 8, 3),
                                  few_rows.Tile(64, 8, 64, 4, 4)])
@pytest.mark.parametrize(("rows", "n", "k", "gelu"), [(67, 6144, 2048, False), (67, 2048, 2048, True),
                                                       (1, 2048, 2048, False), (128, 128, 2048, True),
                                                       (67, 200, 1000, False)])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_kernel_matches_the_product_in_double_at_rdt_1b_shapes(tile: few_rows.Tile, rows: int, n: int, k: int,
                                                              gelu: bool) -> None:
    torch.manual_seed(rows + n + k)
    with torch.device("cuda"):
        x = torch.randn(1, rows, k, dtype=torch.bfloat16)
        w = torch.randn(n, k, dtype=torch.bfloat16) / k ** 0.5
        b = torch.randn(n, dtype=torch.bfloat16)
    ref = _reference(x, w, b, gelu)
    out = few_rows.launch(x, w, b, gelu, tile)
    assert out.shape == (1, rows, n) and out.dtype == torch.bfloat16 and bool(out.isfinite().all())
    assert float((out.double() - ref).norm() / ref.norm()) < 1e-2
    # deterministic: the partials are summed in split order whichever program finishes last
    assert all(torch.equal(few_rows.launch(x, w, b, gelu, tile), out) for _ in range(3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_kernel_replayed_in_a_cuda_graph_reads_new_inputs_and_resets_its_counters() -> None:
    torch.manual_seed(1)
    with torch.device("cuda"):
        ws = [torch.randn(2048, 2048, dtype=torch.bfloat16) / 45 for _ in range(3)]
        bs = [torch.randn(2048, dtype=torch.bfloat16) for _ in range(3)]
        static = torch.randn(1, 67, 2048, dtype=torch.bfloat16)

    def chain(x: torch.Tensor) -> torch.Tensor:
        for w, b in zip(ws, bs, strict=True):
            x = torch.ops.robo_runner.few_rows_linear(x, w, b, True)
        return x

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        chain(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(static)
    for seed in range(3):
        x = torch.randn(1, 67, 2048, dtype=torch.bfloat16, device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
        static.copy_(x)
        graph.replay()
        assert torch.equal(out, chain(x))
    assert not bool(few_rows._counter(torch.device("cuda"), 32)[:32].any())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_denoising_step_through_the_kernel_matches_cublas_eager_and_compiled() -> None:
    """Two RDT-1B-wide blocks at batch 1 (67 tokens), bf16: the step with the blocks' products through the
    kernel against F.linear, eager and compiled."""
    cfg = replace(RdtConfig(), depth=2, img_cond_len=6 * 729)
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = RdtRunner(cfg).to(torch.bfloat16).eval()
        x = torch.randn(1, 65, 2048, dtype=torch.bfloat16)
        lang, img = torch.randn(1, 32, 2048, dtype=torch.bfloat16), torch.randn(1, 6 * 729, 2048, dtype=torch.bfloat16)
        freq, t = torch.full((1,), 25.0, dtype=torch.bfloat16), torch.full((1,), 500)
    with torch.no_grad():
        kv = m.model.condition_kv(lang, img)
        ref = m.model(x, freq, t, lang, img[:, :0], kv=kv)
        use_few_rows(m.model, True)
        eager = m.model(x, freq, t, lang, img[:, :0], kv=kv)
        compiled = torch.compile(m.model, dynamic=False)(x, freq, t, lang, img[:, :0], kv=kv)
        use_few_rows(m.model, False)
    scale = float(ref.float().abs().max())
    for out in (eager, compiled):
        assert float((out.float() - ref.float()).abs().max()) < 3e-2 * scale
    assert not torch.equal(eager, ref)  # the kernel ran, not cuBLAS
