from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from policies.rdt.model import RdtConfig, RdtRunner, SlotPlan
from policies.rdt.state_space import FRANKA


def test_1b_config_matches_the_official_checkpoint_size_and_names() -> None:
    """RDT-1B: 1,228,319,872 parameters (upstream's count, the issue's calibration), official key names and shapes."""
    with torch.device("meta"):
        m = RdtRunner(RdtConfig())
    assert sum(p.numel() for p in m.parameters()) == 1_228_319_872
    sd = m.state_dict()
    expected = {
        "model.t_embedder.mlp.0.weight": (2048, 256), "model.freq_embedder.mlp.2.weight": (2048, 2048),
        "model.x_pos_embed": (1, 67, 2048), "model.lang_cond_pos_embed": (1, 1024, 2048),
        "model.img_cond_pos_embed": (1, 4374, 2048), "model.blocks.0.norm1.weight": (2048,),
        "model.blocks.0.attn.qkv.weight": (6144, 2048), "model.blocks.0.attn.qkv.bias": (6144,),
        "model.blocks.0.attn.q_norm.weight": (64,), "model.blocks.0.attn.k_norm.weight": (64,),
        "model.blocks.0.attn.proj.weight": (2048, 2048), "model.blocks.13.cross_attn.q.weight": (2048, 2048),
        "model.blocks.13.cross_attn.kv.weight": (4096, 2048), "model.blocks.13.cross_attn.q_norm.weight": (64,),
        "model.blocks.27.norm3.weight": (2048,), "model.blocks.27.ffn.fc1.weight": (2048, 2048),
        "model.blocks.27.ffn.fc2.bias": (2048,), "model.final_layer.norm_final.weight": (2048,),
        "model.final_layer.ffn_final.fc2.weight": (128, 2048), "lang_adaptor.0.weight": (2048, 4096),
        "lang_adaptor.2.weight": (2048, 2048), "img_adaptor.0.weight": (2048, 1152),
        "state_adaptor.0.weight": (2048, 256), "state_adaptor.4.weight": (2048, 2048),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "model.blocks.28.norm1.weight" not in sd
    assert {k.split(".")[0] for k in sd} == {"model", "lang_adaptor", "img_adaptor", "state_adaptor"}


def test_tiny_forward_backward_and_strict_round_trip() -> None:
    cfg = RdtConfig.tiny()
    m = RdtRunner(cfg)
    b = 2
    lang, img = torch.randn(b, 5, cfg.lang_token_dim), torch.randn(b, cfg.img_cond_len, cfg.img_token_dim)
    lang_mask = torch.ones(b, 5, dtype=torch.bool)
    lang_mask[1, 3:] = False
    state, action = torch.randn(b, 1, 128), torch.randn(b, cfg.horizon, 128)
    mask = torch.from_numpy(FRANKA.indicator())[None, None].expand(b, 1, -1)
    alphas = torch.linspace(0.999, 0.01, cfg.num_train_timesteps)
    loss = m.compute_loss(lang, lang_mask, img, state, action, mask, torch.full((b,), 25.0),
                          torch.randn_like(action), torch.randint(0, 1000, (b,)), alphas)
    loss.backward()
    assert torch.isfinite(loss) and m.model.blocks[1].cross_attn.kv.weight.grad is not None
    other = RdtRunner(cfg)
    other.load_state_dict(m.state_dict(), strict=True)


def test_franka_maps_into_the_unified_vector_and_back() -> None:
    q = np.arange(1, 9, dtype=np.float32)
    u = FRANKA.to_unified(q)
    assert u.shape == (128,) and u[:7].tolist() == [1, 2, 3, 4, 5, 6, 7] and u[10] == 8 and u.sum() == q.sum()
    assert FRANKA.indicator()[[0, 6, 10]].tolist() == [1, 1, 1] and FRANKA.indicator().sum() == 8
    np.testing.assert_array_equal(FRANKA.from_unified(u), q)
    with pytest.raises(ValueError, match=r"places 8 values .* 14-dimensional"):
        FRANKA.to_unified(np.zeros(14))


@torch.no_grad()
def diffusers_reference(runner: RdtRunner, sampler: Any, lang: torch.Tensor, lang_mask: torch.Tensor, img: torch.Tensor,
                        state: torch.Tensor, action_mask: torch.Tensor, ctrl_freq: torch.Tensor,
                        generator: torch.Generator) -> torch.Tensor:
    """The sampling loop as upstream writes it, with diffusers' DPMSolverMultistepScheduler: the oracle for
    sample_chunk's precomputed updates."""
    cfg = runner.cfg
    lang_c, img_c = runner.lang_adaptor(lang), runner.img_adaptor(img)
    state_c = runner.state_adaptor(torch.cat([state, action_mask], dim=2))
    noisy = torch.randn((state.shape[0], cfg.horizon, cfg.action_dim), generator=generator, dtype=state.dtype)
    mask = action_mask.expand(-1, cfg.horizon, -1)
    sampler.set_timesteps(cfg.num_inference_timesteps)
    for t in sampler.timesteps:
        traj = torch.cat([state_c, runner.state_adaptor(torch.cat([noisy, mask], dim=2))], dim=1)
        out = runner.model(traj, ctrl_freq, t[None], lang_c, img_c, lang_mask=lang_mask)
        noisy = sampler.step(out, t, noisy).prev_sample.to(state.dtype)
    return noisy * mask


def test_sampled_chunk_and_local_siglip(tmp_path: Path) -> None:
    from policies.rdt.model import dpm_solver_coefficients, sample_chunk
    from policies.rdt.vision import SiglipTower, save_tiny_siglip

    tower = SiglipTower(save_tiny_siglip(tmp_path / "siglip", hidden=16), torch.device("cpu"))
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(6)]
    tokens = tower(frames)
    assert tokens.shape == (6, 4, 16)  # (28 / 14)^2 patches of the tiny model
    cfg = RdtConfig.tiny()
    m = RdtRunner(cfg).eval()
    img = tokens.reshape(1, 24, 16)[:, : cfg.img_cond_len]
    coef = dpm_solver_coefficients(cfg)
    mask = torch.from_numpy(FRANKA.indicator())[None, None]
    noise = torch.randn((1, cfg.horizon, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = sample_chunk(m, coef, torch.randn(1, 5, cfg.lang_token_dim), torch.ones(1, 5, dtype=torch.bool), img,
                           torch.randn(1, 1, 128), mask, torch.tensor([25.0]), noise, [torch.tensor([t]) for t, *_ in coef])
    assert out.shape == (1, cfg.horizon, 128)
    assert torch.all(out[..., 11:50] == 0) and torch.any(out[..., :7] != 0)  # absent dims stay zero
    chunk = FRANKA.from_unified(out[0].numpy())
    assert chunk.shape == (cfg.horizon, 8)


def test_graph_ready_sampler_equals_diffusers_dpm_solver() -> None:
    from policies.rdt.model import dpm_solver_coefficients, sample_chunk, schedulers

    cfg = RdtConfig.tiny()
    torch.manual_seed(3)
    m = RdtRunner(cfg).eval()
    mask = torch.from_numpy(FRANKA.indicator())[None, None].expand(2, 1, -1)
    lang, lm = torch.randn(2, 5, cfg.lang_token_dim), torch.ones(2, 5, dtype=torch.bool)
    lm[1, 3:] = False  # padded instruction tokens
    img, state, freq = torch.randn(2, cfg.img_cond_len, cfg.img_token_dim), torch.randn(2, 1, 128), torch.tensor([25.0, 10.0])
    ref = diffusers_reference(m, schedulers(cfg)[1], lang, lm, img, state, mask, freq, torch.Generator().manual_seed(1))
    noise = torch.randn((2, cfg.horizon, 128), generator=torch.Generator().manual_seed(1))
    coef = dpm_solver_coefficients(cfg)
    assert [t for t, *_ in coef] == [999, 799, 599, 400, 200]
    out = sample_chunk(m, coef, lang, lm, img, state, mask, freq, noise, [torch.tensor([t]) for t, *_ in coef])
    assert float((out - ref).norm() / ref.norm()) < 1e-5


def test_sampler_calls_the_given_step_functions_without_truth_testing_them() -> None:
    """Compiled modules raise on len(), which `denoise or model` calls: the compiled act path fell back silently."""
    from policies.rdt.model import dpm_solver_coefficients, sample_chunk

    cfg = RdtConfig.tiny()
    m = RdtRunner(cfg).eval()
    calls = {"denoise": 0, "condition": 0}

    class Counting:
        def __init__(self, name: str, fn: Any) -> None:
            self.name, self.fn = name, fn

        def __len__(self) -> int:
            raise TypeError("no len()")

        def __call__(self, *a: Any, **k: Any) -> Any:
            calls[self.name] += 1
            return self.fn(*a, **k)

    coef = dpm_solver_coefficients(cfg)
    args = (torch.randn(1, 5, cfg.lang_token_dim), torch.ones(1, 5, dtype=torch.bool),
            torch.randn(1, cfg.img_cond_len, cfg.img_token_dim), torch.randn(1, 1, 128),
            torch.from_numpy(FRANKA.indicator())[None, None], torch.tensor([25.0]), torch.randn(1, cfg.horizon, 128),
            [torch.tensor([t]) for t, *_ in coef])
    with torch.no_grad():
        plain = sample_chunk(m, coef, *args)
        wrapped = sample_chunk(m, coef, *args, Counting("denoise", m.model), Counting("condition", m.model.condition_kv))
    assert calls == {"denoise": len(coef), "condition": 1}
    assert torch.equal(plain, wrapped)


def _split_key_inputs(cfg: RdtConfig) -> tuple[Any, ...]:
    from policies.rdt.model import dpm_solver_coefficients

    g = torch.Generator().manual_seed(5)
    coef = dpm_solver_coefficients(cfg)
    args = (torch.randn(1, 5, cfg.lang_token_dim, generator=g), torch.ones(1, 5, dtype=torch.bool),
            torch.randn(1, cfg.img_cond_len, cfg.img_token_dim, generator=g), torch.randn(1, 1, 128, generator=g),
            torch.from_numpy(FRANKA.indicator())[None, None], torch.tensor([25.0]),
            torch.randn(1, cfg.horizon, 128, generator=g), [torch.tensor([t]) for t, *_ in coef])
    return coef, args


def test_split_key_image_attention_samples_the_same_chunk_and_only_image_blocks_use_it() -> None:
    """The image blocks attending to their keys in parts (one per image) sample SDPA's chunk."""
    from policies.rdt.model import RdtBlock, sample_chunk, split_image_keys

    cfg = RdtConfig.tiny()
    torch.manual_seed(4)
    m = RdtRunner(cfg).eval()
    coef, args = _split_key_inputs(cfg)
    parts = 3  # of 12 image tokens
    with torch.no_grad():
        plain = sample_chunk(m, coef, *args)
        split_image_keys(m.model, parts)
        split = sample_chunk(m, coef, *args)
    used = [b.cross_attn.key_parts for b in m.model.blocks if isinstance(b, RdtBlock)]
    assert used == [parts if i % 2 else 0 for i in range(cfg.depth)]  # odd blocks attend to the images
    assert float((split - plain).abs().max()) < 1e-5
    assert not torch.equal(split, plain)  # the split path ran (its sums round differently)


def test_split_keys_only_where_the_flash_kernel_runs() -> None:
    from policies.rdt.model import split_keys_supported

    assert not split_keys_supported(torch.device("cpu"), torch.bfloat16)
    if torch.cuda.is_available():
        assert not split_keys_supported(torch.device("cuda"), torch.float32)  # flash attention: bf16 / fp16 only


@pytest.mark.parametrize("parts", [1, 3, 6])
def test_split_key_attention_equals_one_attention_on_keys_values_layout(parts: int) -> None:
    from policies.rdt.model import CrossAttention, split_key_attention

    torch.manual_seed(parts)
    attn = CrossAttention(64, 4).eval()
    x, cond = torch.randn(2, 7, 64), torch.randn(2, 30, 64)
    with torch.no_grad():
        k, v = attn.keys_values(cond)
        q = torch.randn(2, 4, 7, 16)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        assert float((split_key_attention(q, k, v, parts) - ref).abs().max()) < 1e-5
        plain = attn(x, (k, v), None)
        attn.key_parts = 4  # 30 keys do not divide by 4: one attention
        assert torch.equal(attn(x, (k, v), None), plain)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("compiled", [False, True])
def test_split_key_attention_matches_sdpa_on_the_gpu_at_rdt_1b_width(compiled: bool) -> None:
    """At RDT-1B's heads and 4,374 image tokens, in bf16 as act runs it, eager and compiled."""
    from policies.rdt.model import CrossAttention

    torch.manual_seed(0)
    with torch.device("cuda"):
        attn = CrossAttention(2048, 32).to(torch.bfloat16).eval()
        x, cond = torch.randn(1, 67, 2048, dtype=torch.bfloat16), torch.randn(1, 4374, 2048, dtype=torch.bfloat16)
    with torch.no_grad():
        kv = attn.keys_values(cond)
        plain = attn(x, kv, None)
        attn.key_parts = 6
        split = (torch.compile(attn, dynamic=False) if compiled else attn)(x, kv, None)
    assert float((split.float() - plain.float()).abs().max()) < 2e-2 * float(plain.float().abs().max())


def _moved_against_computed(cfg: RdtConfig, device: str, dtype: torch.dtype) -> tuple[float, list[Any], list[Any]]:
    """Two calls through Rdt.image_kv_slots (every slot computed, then three new frames computed and the last three
    moved one history step older) against image_kv from scratch on the second call's tokens: (the largest key or
    value, the kept keys/values, the reference)."""
    from policies.rdt.model import Rdt

    torch.manual_seed(0)
    model = Rdt(cfg).to(device, dtype).eval()
    per = cfg.img_cond_len // 6
    with torch.device(device):
        background, last, new = (torch.randn(1, 3 * per, cfg.hidden_size, dtype=dtype) for _ in range(3))
        shape = (1, cfg.img_cond_len, cfg.num_heads, cfg.hidden_size // cfg.num_heads)
        kept = [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
                for _ in range(cfg.depth // 2)]
    with torch.no_grad():
        model.image_kv_slots(torch.cat([background, last], 1), SlotPlan((0, 1, 2, 3, 4, 5), (), 3), per, kept, None)
        ours = model.image_kv_slots(new, SlotPlan((3, 4, 5), (0, 1, 2), 3), per, kept, model.slot_deltas(per, 3))
        ref = model.image_kv(torch.cat([last, new], 1))
    scale = max(float(t.float().abs().max()) for kv in ref for t in kv)
    return scale, ours, ref


def test_a_frame_moved_one_step_older_has_the_keys_values_computed_at_its_new_slot() -> None:
    scale, ours, ref = _moved_against_computed(replace(RdtConfig.tiny(), img_cond_len=6 * 5), "cpu", torch.float32)
    for (k, v), (rk, rv) in zip(ours, ref, strict=True):
        assert float((k - rk).abs().max()) < 1e-5 * scale and float((v - rv).abs().max()) < 1e-5 * scale


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_moved_and_computed_image_keys_values_at_rdt_1b_width_kernel_and_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16, one image block of RDT-1B width, 6 x 729 image tokens: kv_place's Triton kernel and its eager path
    against keys/values computed from scratch, and against each other."""
    from policies.rdt import kv_place

    cfg = replace(RdtConfig(), depth=2)
    assert kv_place.fused(torch.zeros(1, dtype=torch.bfloat16, device="cuda"))
    scale, fused, ref = _moved_against_computed(cfg, "cuda", torch.bfloat16)
    monkeypatch.setattr(kv_place, "fused", lambda t: False)
    _, eager, _ = _moved_against_computed(cfg, "cuda", torch.bfloat16)
    for ours in (fused, eager):
        for (k, v), (rk, rv) in zip(ours, ref, strict=True):
            assert float((k - rk).float().abs().max()) < 2e-2 * scale
            assert float((v - rv).float().abs().max()) < 2e-2 * scale
    for (k, v), (ek, ev) in zip(fused, eager, strict=True):  # a bf16 rounding or two apart
        assert float((k - ek).float().abs().max()) < 1e-2 * scale and float((v - ev).float().abs().max()) < 1e-2 * scale


def test_decode_attention_is_chosen_only_where_its_triton_kernels_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from policies.rdt import decode_attention as decode
    from policies.rdt.model import RdtBlock, split_image_keys

    assert not decode.supported(torch.device("cpu"), torch.bfloat16, 64)
    if torch.cuda.is_available():
        assert not decode.supported(torch.device("cuda"), torch.float32, 64)  # bf16 / fp16 only
        assert not decode.supported(torch.device("cuda"), torch.bfloat16, 512)  # head size
    # ~2 programs a multiprocessor: RDT-1B's 32 heads x 67 queries on an H200's 132 -> 8 parts
    assert decode.splits_for(torch.device("cpu"), 1, 32, 67) == 8
    assert decode.splits_for(torch.device("cpu"), 16, 32, 67) == 1
    monkeypatch.setenv("RDT_DECODE_SPLITS", "12")
    assert decode.splits_for(torch.device("cpu"), 1, 32, 67) == 12
    assert decode.split_length(4374, 8) == 576 and decode.split_length(30, 8) == 64  # whole 64-key blocks
    m = RdtRunner(RdtConfig.tiny())
    split_image_keys(m.model, 6, 8)
    attns = [b.cross_attn for b in m.model.blocks if isinstance(b, RdtBlock)]
    assert [(a.key_parts, a.decode_parts) for a in attns] == [(0, 0), (6, 8)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("splits", [1, 7, 8, 16])
def test_decode_attention_matches_sdpa_eager_compiled_and_graphed_at_rdt_1b_width(splits: int) -> None:
    """The Triton kernels against SDPA on keys_values's layout: 67 queries, 32 heads of 64, 4,374 keys, bf16."""
    from policies.rdt.model import CrossAttention

    torch.manual_seed(splits)
    with torch.device("cuda"):
        attn = CrossAttention(2048, 32).to(torch.bfloat16).eval()
        x, cond = torch.randn(1, 67, 2048, dtype=torch.bfloat16), torch.randn(1, 4374, 2048, dtype=torch.bfloat16)
    with torch.no_grad():
        kv = attn.keys_values(cond)
        ref = attn(x, kv, None)  # one SDPA
        attn.decode_parts = splits
        eager = attn(x, kv, None)
        compiled = torch.compile(attn, dynamic=False)(x, kv, None)
        static = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            attn(static, kv, None)  # warm-up off the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            graphed = attn(static, kv, None)
        static.copy_(x * 0.5)
        graph.replay()
        half = attn(x * 0.5, kv, None)
    scale = float(ref.float().abs().max())
    for out in (eager, compiled):
        assert float((out.float() - ref.float()).abs().max()) < 2e-2 * scale
    assert not torch.equal(eager, ref)  # the kernels ran, not SDPA
    assert torch.equal(graphed, half)  # the replay read the new queries


def test_torch_image_prep_matches_the_siglip_processor(tmp_path: Path) -> None:
    from transformers import SiglipImageProcessor

    from policies.rdt.images import ImagePrep

    SiglipImageProcessor(size={"height": 384, "width": 384}).save_pretrained(str(tmp_path))
    prep = ImagePrep(tmp_path)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 640)[None, :] * np.ones((480, 1))
    frame = np.clip(np.stack([ramp, 255 - ramp, np.full_like(ramp, 80)], -1) + rng.integers(-20, 20, (480, 640, 3)), 0, 255)
    frame = frame.astype(np.uint8)
    ours = prep.pixels([frame])
    processor = SiglipImageProcessor.from_pretrained(str(tmp_path))  # transformers' own, as the reference
    square = np.broadcast_to(prep.background, (640, 640, 3)).copy()  # upstream's pad-to-square, by hand
    square[80:560] = frame
    ref = processor(images=[square], return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (1, 3, 384, 384)
    assert float((ours - ref).abs().mean()) < 0.005 and float((ours - ref).abs().max()) < 0.05  # 1-2 of 255 levels
    assert torch.allclose(ours[0, :, 0, 0], (torch.tensor([127.0, 127.0, 127.0]) / 255 - 0.5) / 0.5, atol=0.02)  # padding


def test_policy_encodes_only_new_frames(tmp_path: Path) -> None:
    from policies.rdt.infer import RdtPolicy
    from policies.rdt.vision import save_tiny_siglip

    cfg = replace(RdtConfig.tiny(), img_cond_len=6 * 4)  # 3 slots x 2 frames x (28 / 14)^2 patches
    siglip = save_tiny_siglip(tmp_path / "siglip", hidden=cfg.img_token_dim)
    meta = {"state_map": {"name": "franka", "indices": list(FRANKA.indices)}, "img_history_size": 2, "ctrl_freq": 25}
    policy = RdtPolicy(RdtRunner(cfg).eval(), meta, torch.device("cpu"), torch.float32, siglip)
    encoded: list[int] = []
    encode = policy.tower.encode
    policy.tower.encode = lambda px: (encoded.append(len(px)), encode(px))[1]  # type: ignore[method-assign]
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(3)]
    emb = torch.randn(4, cfg.lang_token_dim)
    first = policy.act({"qpos": np.zeros(8), "images": {"cam_high": frames[0]}}, emb)
    policy.act({"qpos": np.zeros(8), "images": {"cam_high": frames[1]}}, emb)
    assert encoded == [2, 1]  # the background + the first frame, then only the new frame
    uncached = policy.tower(
        [policy.tower.prep.blank(), policy.tower.prep.blank(), policy.tower.prep.blank(), frames[0],
         policy.tower.prep.blank(), policy.tower.prep.blank()])
    assert torch.allclose(torch.cat(policy._frame_tokens([None, None, None, frames[0], None, None])[1]), uncached,
                          atol=1e-5)
    policy.reset()
    again = policy.act({"qpos": np.zeros(8), "images": {"cam_high": frames[0]}}, emb)
    np.testing.assert_allclose(first, again, atol=1e-5)  # reset: same seed, same history, same chunk


def tiny_policies(tmp_path: Path, n: int, device: str = "cpu", dtype: torch.dtype = torch.float32, history: int = 2
                  ) -> tuple[list[Any], int]:
    """`n` RdtPolicies sharing one tiny seeded model on `device` (3 slots x `history` frames x 4 patches), and its
    language token width."""
    from policies.rdt.infer import RdtPolicy
    from policies.rdt.vision import save_tiny_siglip

    cfg = replace(RdtConfig.tiny(), img_cond_len=3 * history * 4)  # 3 slots x frames x (28 / 14)^2 patches
    siglip = save_tiny_siglip(tmp_path / "siglip", hidden=cfg.img_token_dim)
    meta = {"state_map": {"name": "franka", "indices": list(FRANKA.indices)}, "img_history_size": history,
            "ctrl_freq": 25}
    torch.manual_seed(0)
    model = RdtRunner(cfg).to(device, dtype).eval()
    return [RdtPolicy(model, meta, torch.device(device), dtype, siglip) for _ in range(n)], cfg.lang_token_dim


def _two_policies(tmp_path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Any, Any, int]:
    """A policy keeping keys/values across calls and one computing every one at every call (the reference)."""
    (keeping, plain), lang = tiny_policies(tmp_path, 2, device, dtype)
    plain.keep_kv = False
    return keeping, plain, lang


def test_kept_image_keys_values_give_the_chunks_of_computing_every_slot(tmp_path: Path) -> None:
    """One camera: the background slots' image keys/values are computed once and kept, each call computes only the
    slots whose frame changed; the chunks are those of a policy that computes every slot at every call, through new
    frames, a repeated frame, a second camera appearing, a camera refilling one array and a reset."""
    keeping, plain, lang = _two_policies(tmp_path)
    rng = np.random.default_rng(0)
    emb = torch.randn(4, lang)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(6)]
    refilled = frames[5].copy()
    calls: list[dict[str, np.ndarray]] = [
        {"cam_high": frames[0]}, {"cam_high": frames[1]}, {"cam_high": frames[2]},
        {"cam_high": frames[2]},  # the camera repeats its frame: nothing changed in the newest slot
        {"cam_high": frames[3], "cam_left_wrist": frames[4]},  # a second camera
        {"cam_high": refilled}, {"cam_high": refilled}]
    plans: list[SlotPlan | None] = []
    plan = keeping._plan
    keeping._plan = lambda keys: (plans.append(plan(keys)), plans[-1])[1]
    for i, images in enumerate(calls):
        if i == 6:
            refilled[:] = frames[1]  # the same array, new content
        if i == 3:
            keeping.reset()
            plain.reset()
        ours = keeping.act({"qpos": np.zeros(8), "images": images}, emb)
        ref = plain.act({"qpos": np.zeros(8), "images": images}, emb)
        np.testing.assert_allclose(ours, ref, atol=1e-4, err_msg=f"call {i}")
    assert keeping.kept_keys is not None and plain.kept_keys is None
    every = SlotPlan((0, 1, 2, 3, 4, 5), (), 3)
    assert plans[0] == every  # the first call computes and keeps every slot (the backgrounds too)
    assert plans[1] == plans[2] == SlotPlan((3,), (0,), 3)  # one camera: its new frame computed, the last one moved
    assert plans[3] == every  # after reset
    assert plans[4] == SlotPlan((3, 5), (0,), 3)  # the second camera's slot too
    # the refilled array is a new frame in both slots; the second camera's older slot takes the background
    assert plans[6] == SlotPlan((0, 3), (2,), 3)
    assert len(keeping.token_cache) and keeping.kept is not None


def test_the_instructions_keys_values_are_kept_while_it_is_the_same_unmodified_tensor(tmp_path: Path) -> None:
    keeping, plain, lang = _two_policies(tmp_path)
    computed: list[int] = []
    lang_kv = keeping.lang_kv
    keeping.lang_kv = lambda c: (computed.append(c.shape[1]), lang_kv(c))[1]
    rng = np.random.default_rng(2)
    emb = torch.randn(4, lang)
    other = torch.randn(6, lang)
    calls = [emb, emb, emb.clone(), other, other, emb, "modified", emb]
    for i, instruction in enumerate(calls):
        if isinstance(instruction, str):
            emb.mul_(2)  # the same tensor, changed in place: its version counter moves
            instruction = emb
        images = {"cam_high": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)}
        ours = keeping.act({"qpos": np.zeros(8), "images": images}, instruction)
        ref = plain.act({"qpos": np.zeros(8), "images": images}, instruction)
        np.testing.assert_allclose(ours, ref, atol=1e-4, err_msg=f"call {i}")
    # computed at the first call, for the clone, for the other instruction, back to the first, after the change
    assert computed == [4, 4, 6, 4, 4]
    with torch.inference_mode():
        frozen = torch.randn(4, lang)  # no version counter: never kept
    for _ in range(2):
        keeping.act({"qpos": np.zeros(8), "images": {"cam_high": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)}},
                    frozen)
    assert computed[-2:] == [4, 4] and keeping.lang_seen is None


def _random_run(keeping: Any, plain: Any, lang: int, atol: float) -> None:
    rng = np.random.default_rng(7)
    cams = ("cam_high", "cam_right_wrist", "cam_left_wrist")
    pool = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(5)]
    instructions = [torch.randn(4, lang), torch.randn(5, lang)]
    for i in range(40):
        if rng.random() < 0.1:
            keeping.reset()
            plain.reset()
        if rng.random() < 0.1:
            instructions[0].add_(0.5)
        if rng.random() < 0.15:
            pool[int(rng.integers(5))][:] = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)  # refilled in place
        images = {c: (pool[int(rng.integers(5))] if rng.random() < 0.5
                      else rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
                  for c in cams if rng.random() < 0.6}
        instruction = instructions[int(rng.random() < 0.2)]
        qpos = rng.normal(size=8)
        ours = keeping.act({"qpos": qpos, "images": images}, instruction)
        ref = plain.act({"qpos": qpos, "images": images}, instruction)
        np.testing.assert_allclose(ours, ref, atol=atol * (1 + float(np.abs(ref).max())), err_msg=f"call {i}")


def test_keeping_keys_values_through_a_random_run_gives_the_chunks_of_computing_all(tmp_path: Path) -> None:
    """40 calls drawn at random: cameras present or not, new or repeated frames, an array refilled, the instruction
    swapped or changed in place, resets; every chunk is the one a policy computing everything gives."""
    _random_run(*_two_policies(tmp_path), atol=1e-5)


def test_one_history_frame_keeps_its_keys_normalised_in_place(tmp_path: Path) -> None:
    """img_history_size 1: nothing moves, the pre-norm keys share the keys' memory; chunks equal computing all."""
    (keeping, plain), lang = tiny_policies(tmp_path, 2, history=1)
    plain.keep_kv = False
    rng = np.random.default_rng(4)
    emb = torch.randn(4, lang)
    for i in range(4):
        images = {"cam_high": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)}
        ours = keeping.act({"qpos": np.zeros(8), "images": images}, emb)
        ref = plain.act({"qpos": np.zeros(8), "images": images}, emb)
        np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"call {i}")
    assert all(pre is k for pre, k, _ in keeping.kept) and keeping.deltas is None


def test_three_history_frames_move_twice_oldest_first(tmp_path: Path) -> None:
    """img_history_size 3: a frame moves at two calls running, and a run of moved slots longer than one history
    step is written oldest first (a slot is read before it is overwritten); chunks equal computing all."""
    (keeping, plain), lang = tiny_policies(tmp_path, 2, history=3)
    plain.keep_kv = False
    plans: list[SlotPlan | None] = []
    plan = keeping._plan
    keeping._plan = lambda keys: (plans.append(plan(keys)), plans[-1])[1]
    rng = np.random.default_rng(3)
    emb = torch.randn(4, lang)
    cams = ("cam_high", "cam_right_wrist", "cam_left_wrist")
    for i in range(6):
        images = {c: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for c in cams[:1 + i % 3]}
        ours = keeping.act({"qpos": np.zeros(8), "images": images}, emb)
        ref = plain.act({"qpos": np.zeros(8), "images": images}, emb)
        np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"call {i}")
    assert plans[4] == SlotPlan((6, 7), (0, 1, 2, 3, 4, 5), 3)  # two history steps of frames moved at once


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_keeping_keys_values_in_cuda_graphs_through_a_random_run(tmp_path: Path) -> None:
    """The same random run on a GPU, bf16, every call a CUDA graph replay (a graph per set of changed slots and per
    fresh or kept instruction), against a policy computing everything in its graphs."""
    keeping, plain, lang = _two_policies(tmp_path, "cuda", torch.bfloat16)
    _random_run(keeping, plain, lang, atol=0.05)
    assert len(keeping.graphs) > 2 and all(slots is None and fresh for _, slots, fresh in plain.graphs)


def test_three_cameras_with_new_frames_compute_the_new_frames_and_move_the_last_ones(tmp_path: Path) -> None:
    keeping, plain, lang = _two_policies(tmp_path)
    rng = np.random.default_rng(1)
    emb = torch.randn(4, lang)
    plans: list[SlotPlan | None] = []
    plan = keeping._plan
    keeping._plan = lambda keys: (plans.append(plan(keys)), plans[-1])[1]
    for i in range(4):
        images = {s: rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
                  for s in ("cam_high", "cam_right_wrist", "cam_left_wrist")}
        ours = keeping.act({"qpos": np.zeros(8), "images": images}, emb)
        ref = plain.act({"qpos": np.zeros(8), "images": images}, emb)
        np.testing.assert_allclose(ours, ref, atol=1e-4, err_msg=f"call {i}")
    # the first call's older frames are the background; then each call computes its three new frames only
    assert plans == [SlotPlan((0, 1, 2, 3, 4, 5), (), 3)] + [SlotPlan((3, 4, 5), (0, 1, 2), 3)] * 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_graphed_act_with_split_image_keys_gives_the_chunk_of_one_attention(tmp_path: Path) -> None:
    """act's default GPU path (CUDA graphs, uncompiled, image keys split per image) against one attention."""
    from policies.rdt.infer import RdtPolicy
    from policies.rdt.model import RdtBlock, split_image_keys
    from policies.rdt.vision import save_tiny_siglip

    cfg = replace(RdtConfig.tiny(), img_cond_len=6 * 4)
    siglip = save_tiny_siglip(tmp_path / "siglip", hidden=cfg.img_token_dim)
    meta = {"state_map": {"name": "franka", "indices": list(FRANKA.indices)}, "img_history_size": 2, "ctrl_freq": 25}
    torch.manual_seed(0)
    model = RdtRunner(cfg).to("cuda", torch.bfloat16).eval()
    frames = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(3)]
    emb = torch.randn(4, cfg.lang_token_dim)
    chunks = []
    for parts, decode_parts in ((-1, -1), (6, 0), (0, 0)):  # the policy's default (decode_attention), aten's, one
        policy = RdtPolicy(model, meta, torch.device("cuda"), torch.bfloat16, siglip)
        attns = [b.cross_attn for b in model.model.blocks if isinstance(b, RdtBlock)]
        assert [a.key_parts for a in attns] == [0, 6] and attns[0].decode_parts == 0
        assert attns[1].decode_parts > 0  # the Triton kernels are the default on a GPU
        if parts >= 0:
            split_image_keys(model.model, parts, decode_parts)
        chunks.append([policy.act({"qpos": np.zeros(8), "images": {"cam_high": f}}, emb) for f in frames])
        # captured and replayed: the first call's (every key and value computed) and the later calls' (the new
        # frame's image slot computed, the last frame's moved; the instruction's kept)
        assert sorted((plan, fresh) for _, plan, fresh in policy.graphs) == [
            (SlotPlan((0, 1, 2, 3, 4, 5), (), 3), True), (SlotPlan((3,), (0,), 3), False)]
    for one_chunk in range(len(frames)):
        one = chunks[2][one_chunk]
        for other in (chunks[0][one_chunk], chunks[1][one_chunk]):
            np.testing.assert_allclose(other, one, atol=0.05 * float(np.abs(one).max()) + 1e-3)
