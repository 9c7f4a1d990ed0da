"""Two RDT-1B-wide blocks (a language one, an image one) at batch 1 in bf16, run with an act switch off, then on:
eager, compiled and replayed in a CUDA graph (the GPU tests of act's kernels)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from policies.rdt.model import Rdt, RdtConfig, RdtRunner


@dataclass
class BlockRuns:
    ref: torch.Tensor  # switch off, eager
    eager: torch.Tensor  # switch on
    compiled: torch.Tensor
    graphed: torch.Tensor  # a graph captured on x, replayed on x / 2
    half: torch.Tensor  # switch on, eager, on x / 2

    def assert_close(self) -> None:
        """Eager and compiled within 3% of the output's scale of the reference; the graph's replay equals eager."""
        scale = float(self.ref.float().abs().max())
        for out in (self.eager, self.compiled):
            assert float((out.float() - self.ref.float()).abs().max()) < 3e-2 * scale
        assert torch.equal(self.graphed, self.half)


def run_blocks(switch: Callable[[Rdt, bool], None], img_tokens: int, lang_mask_from: int | None = None) -> BlockRuns:
    """The two blocks over 40 language tokens (keys from `lang_mask_from` on masked out) and `img_tokens` image
    tokens, with `switch(model, on)` turning the kernel under test on and off."""
    cfg = replace(RdtConfig(), depth=2, img_cond_len=img_tokens)
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = RdtRunner(cfg).to(torch.bfloat16).eval()
        x = torch.randn(1, 65, 2048, dtype=torch.bfloat16)
        lang = torch.randn(1, 40, 2048, dtype=torch.bfloat16)
        img = torch.randn(1, img_tokens, 2048, dtype=torch.bfloat16)
        freq, t = torch.full((1,), 25.0, dtype=torch.bfloat16), torch.full((1,), 500)
        mask = None if lang_mask_from is None else torch.arange(40)[None] < lang_mask_from
    with torch.no_grad():
        kv = m.model.condition_kv(lang, img)

        def step(inp: torch.Tensor) -> torch.Tensor:
            return m.model(inp, freq, t, lang, img[:, :0], lang_mask=mask, kv=kv)

        ref = step(x)
        switch(m.model, True)
        eager = step(x)
        compiled = torch.compile(m.model, dynamic=False)(x, freq, t, lang, img[:, :0], lang_mask=mask, kv=kv)
        static = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            graphed = step(static)
        static.copy_(x * 0.5)
        graph.replay()
        half = step(x * 0.5)
        switch(m.model, False)
    return BlockRuns(ref, eager, compiled, graphed, half)
