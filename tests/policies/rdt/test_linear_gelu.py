"""linear_gelu.py: fc1 and its tanh GELU as one operator (cuBLASLt's GELU epilogue on CUDA), and where act uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from policies.rdt.linear_gelu import linear_gelu
from policies.rdt.model import Mlp, RdtBlock, RdtConfig, RdtRunner, use_gelu_epilogue
from tests.policies.rdt.blocks import run_blocks


def test_use_gelu_epilogue_flags_every_block_and_the_cpu_path_is_fc1_then_gelu_compiled_or_not() -> None:
    torch.manual_seed(0)
    m = RdtRunner(RdtConfig.tiny()).eval()
    x = torch.randn(1, 9, 64)
    args = (x, torch.full((1,), 25.0), torch.full((1,), 500), torch.randn(1, 5, 64), torch.randn(1, 12, 64))
    with torch.no_grad():
        ref = m.model(*args)
        use_gelu_epilogue(m.model, True)
        assert all(b.ffn.gelu_epilogue for b in m.model.blocks if isinstance(b, RdtBlock))
        torch.testing.assert_close(m.model(*args), ref, rtol=0, atol=0)
        mlp = Mlp(64, 64, 64)
        mlp.gelu_epilogue = True
        rows = torch.randn(2, 7, 64)
        # compiled whole (the fake gives the shape): the operator's output as F.linear then the tanh GELU
        compiled = torch.compile(mlp, fullgraph=True, dynamic=False)(rows)
        torch.testing.assert_close(compiled, mlp.fc2(F.gelu(mlp.fc1(rows), approximate="tanh")))
        use_gelu_epilogue(m.model, False)
    assert not any(b.ffn.gelu_epilogue for b in m.model.blocks if isinstance(b, RdtBlock))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_epilogue_matches_double_and_blocks_match_eager_compiled_and_graphed() -> None:
    """The operator at RDT-1B width (67 rows, 2048 -> 2048, bf16) against float64 within a bf16 rounding, and two
    RDT-1B-wide blocks with it eager, compiled and replayed in a CUDA graph against the separate GELU."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        x = torch.randn(1, 67, 2048, dtype=torch.bfloat16)
        w = torch.randn(2048, 2048, dtype=torch.bfloat16) / 45
        b = torch.randn(2048, dtype=torch.bfloat16)
    want = F.gelu(F.linear(x.double(), w.double(), b.double()), approximate="tanh")
    got = linear_gelu(x, w, b)
    assert got.shape == (1, 67, 2048) and got.dtype == torch.bfloat16
    assert float(((got.double() - want).abs() / want.abs().clamp_min(1.0)).max()) < 2 ** -7

    run_blocks(use_gelu_epilogue, 729).assert_close()
