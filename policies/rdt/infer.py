"""RDT inference: `load(checkpoint) -> RdtPolicy` with `reset()` and `act(obs, instruction_embedding)`.

The policy keeps the last `img_history_size` frames of each camera slot (a frame it has not seen yet, or a slot the
robot lacks, is the background image, as in training), encodes them with the SigLIP from the checkpoint's config,
maps the robot state into the unified vector, samples a chunk with DPM-Solver++ and maps it back to robot units:
(chunk, D) for a D-dimensional robot (64 x 8 for the Franka).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies import checkpoint_io
from policies.cuda_graph import Graphed, compile_failed, compile_unavailable
from policies.rdt import checkpoints
from policies.rdt.convert import SLOTS
from policies.rdt.decode_attention import splits_for, supported
from policies.rdt.frames import FramePool, same_bytes
from policies.rdt.model import (
    KeptKV,
    RdtConfig,
    RdtRunner,
    SlotPlan,
    dpm_solver_coefficients,
    interleave,
    sample_chunk,
    split_image_keys,
    split_keys_supported,
    use_gelu_epilogue,
    use_norm_attention,
)
from policies.rdt.state_space import StateMap
from policies.rdt.weights import checkpoint_weights, load_strict, read_state_dict

log = logging.getLogger(__name__)


def resolve(path: Path, name: str = "latest") -> Path:
    """A checkpoint-<step>/ folder: `path` itself, or `name` ("latest" or a folder name) inside it."""
    if (path / checkpoints.COMPLETE).is_file() or name != "latest":
        folder = path if (path / checkpoints.COMPLETE).is_file() else path / name
        if not (folder / checkpoints.COMPLETE).is_file():
            msg = f"{folder}: not a complete RDT checkpoint"
            raise FileNotFoundError(msg)
        why = checkpoints.verify(folder)
        if why:
            raise checkpoint_io.CheckpointError(folder, f"refused: {why}")
        return folder
    found = checkpoints.RdtStore(path).latest()
    if found is None:
        msg = f"no complete RDT checkpoint in {path}; train first (`runner train JOB`)"
        raise FileNotFoundError(msg)
    return found[1]


class RdtPolicy:
    def __init__(self, model: RdtRunner, meta: dict[str, Any], device: torch.device, dtype: torch.dtype,
                 siglip: Path | None = None, compile: bool = False) -> None:
        """`compile` (GPU, opt-in, docs/rdt.md): one denoising step and the condition keys/values compiled before
        their CUDA graphs are captured, since both are bound by their kernel count at batch 1. SigLIP stays eager
        in its graph (SiglipTower says why)."""
        from policies.rdt.vision import SiglipTower

        self.model, self.meta, self.device, self.dtype = model, meta, device, dtype
        self.cfg: RdtConfig = model.cfg
        self.map = StateMap(meta["state_map"]["name"], tuple(meta["state_map"]["indices"]))
        self.history = int(meta["img_history_size"])
        self.ctrl_freq = float(meta["ctrl_freq"])
        reason = compile_unavailable() if compile and device.type == "cuda" else "not asked for"
        if compile and device.type == "cuda" and reason:
            log.warning(f"inference: not compiling: {reason}")
        self.compiled = reason is None
        self.tower = SiglipTower(siglip or Path(meta["siglip"]), device, dtype)
        # The image blocks' keys walked in parts (batch 1 leaves most of a GPU idle): decode_attention's Triton
        # kernels where they build, else one chunk per image in the history (split_key_attention).
        cfg = model.cfg
        heads = cfg.num_heads
        split_image_keys(model.model, self.history * len(SLOTS) if split_keys_supported(device, dtype) else 0,
                         splits_for(device, 1, heads, cfg.horizon + 3)
                         if supported(device, dtype, cfg.hidden_size // heads) else 0)
        # every block's self-attention and language cross-attention with its norms in one kernel (norm_attention.py)
        use_norm_attention(model.model, device.type == "cuda" and os.environ.get("RDT_NORM_ATTENTION", "1") != "0")
        # and every block's fc1 with its GELU as one product (linear_gelu.py)
        use_gelu_epilogue(model.model, device.type == "cuda" and os.environ.get("RDT_GELU_EPILOGUE", "1") != "0")
        self.denoise: Any = torch.compile(model.model, dynamic=False) if self.compiled else model.model
        self.lang_kv: Any = torch.compile(model.model.lang_kv, dynamic=False) if self.compiled else model.model.lang_kv
        self.image_kv: Any = (torch.compile(model.model.image_kv, dynamic=False) if self.compiled
                              else model.model.image_kv)
        # Keys/values kept across calls (`_sample`), each with what it was computed from:
        # - the image blocks' (allocated at first use) and the frame key of each slot: a slot whose frame did not
        #   change (an absent camera's background) is not recomputed, a frame that moved one history step older
        #   takes its kept keys/values plus a per-slot constant (`_plan`, `deltas`; uncompiled, since each plan
        #   would compile anew and a camera repeating a frame mid-run makes a new one);
        # - the language blocks', by instruction length, and the instruction (the same tensor, unmodified) with
        #   its device copy (`_instruction`).
        self.kept: list[KeptKV] | None = None
        self.deltas: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # Rdt.slot_deltas, at the first move
        self.kept_keys: list[object] | None = None
        self.embeddings: list[torch.Tensor] | None = None  # _embeddings
        self.kept_lang: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.lang_seen: tuple[tuple[object, ...], torch.Tensor, torch.Tensor] | None = None  # (id..., it, device copy)
        self.keep_kv = True  # False: every call computes every key and value (the tests' reference)
        self.per_image = cfg.img_cond_len // (self.history * len(SLOTS))
        self.coef = dpm_solver_coefficients(self.cfg)
        self.steps = [torch.full((1,), t, dtype=torch.long, device=device) for t, *_ in self.coef]
        self.frames: deque[dict[str, np.ndarray]] = deque(maxlen=self.history)
        self.generator = torch.Generator(device).manual_seed(0)
        self.action_mask = torch.from_numpy(self.map.indicator())[None, None].to(device, dtype)
        self.freq = torch.full((1,), self.ctrl_freq, device=device, dtype=dtype)
        # by instruction length, image slot plan (None: all computed, none kept), whether the instruction is new
        self.graphs: dict[tuple[int, SlotPlan | None, bool], Graphed] = {}
        self.encoders: dict[tuple[int, tuple[int, ...]], Graphed] = {}  # by the new frames' count and size
        self.token_cache: dict[object, torch.Tensor] = {}
        self.seen: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # id -> (frame, its content, key)
        self.pool = FramePool(device)  # the content copies: pinned on a GPU, and uploaded from there
        self.frames_seen = 0
        self.staging: dict[tuple[int, ...], torch.Tensor] = {}
        self.use_graphs = device.type == "cuda"

    def reset(self, seed: int = 0) -> None:
        self.frames.clear()
        self.token_cache.clear()
        for _, copy, _ in self.seen.values():
            self.pool.give(copy)
        self.seen.clear()
        self.kept_keys = self.lang_seen = None
        self.generator.manual_seed(seed)

    def act(self, obs: dict[str, Any], instruction_embedding: torch.Tensor) -> np.ndarray:
        """obs: {"qpos": (D,), "images": {slot: (H, W, 3) uint8}} -> (chunk, D) actions in robot units."""
        self.frames.append(dict(obs.get("images", {})))
        history: list[dict[str, np.ndarray] | None] = [None] * (self.history - len(self.frames)) + list(self.frames)
        return self.predict(np.asarray(obs["qpos"], np.float32), history, instruction_embedding)

    @torch.no_grad()
    def predict(self, qpos: np.ndarray, history: list[dict[str, np.ndarray] | None],
                embedding: torch.Tensor) -> np.ndarray:
        """One chunk from the state and `img_history_size` frames (oldest first; None or a missing slot: background)."""
        # The host-to-device copies first, while the GPU is idle: from pageable memory they wait for the stream, and
        # after the encode graph was launched they would hold the sample graph's launch until the encoding ended.
        identity, kept_lang = self._instruction(embedding)
        lang = kept_lang if kept_lang is not None else embedding.to(self.device, self.dtype)
        lang = lang[None] if lang.ndim == 2 else lang
        state = torch.from_numpy(self.map.to_unified(qpos[None]))[None].to(self.device, self.dtype)
        noise = torch.randn((1, self.cfg.horizon, self.cfg.action_dim), generator=self.generator, device=self.device)
        frames = [(f or {}).get(slot) for f in history for slot in SLOTS]
        keys, tokens = self._frame_tokens(frames)
        plan = self._plan(keys)
        fresh = kept_lang is None
        self._embeddings()  # computed here at the first call, outside any graph's capture
        fn = functools.partial(self._sample, plan, fresh)
        img = torch.cat(tokens if plan is None else [tokens[s] for s in plan.compute] or [tokens[0][:, :0]])
        inputs = {"img": img.reshape(1, -1, self.tower.hidden_size), "lang": lang, "state": state, "noise": noise}
        self.kept_keys = None  # until this call's keys/values are written
        if fresh:
            self.lang_seen = None
        run = self._graph(self.graphs, (lang.shape[1], plan, fresh), fn, inputs) if self.use_graphs else None
        out = run(inputs) if run is not None else fn(**inputs)
        self.kept_keys = None if plan is None else keys
        if fresh and self.keep_kv and identity is not None:
            self.lang_seen = (identity, embedding, lang)
        return self.map.from_unified(out[0].float().cpu().numpy())

    def _plan(self, keys: list[object]) -> SlotPlan | None:
        """Which image slots this call writes into `kept` (None: every slot computed, nothing kept, when keeping is
        off). A slot whose frame is the one it was computed from is kept as it is; one whose frame was the slot's
        one history step later at the last call (every frame moves there at every call) is moved; the rest are
        computed. The first call, and the first after a reset, computes every slot."""
        if not self.keep_kv:
            return None
        old, shift = self.kept_keys, len(SLOTS)
        changed = [s for s, k in enumerate(keys) if old is None or old[s] != k]
        moved = tuple(s for s in changed if old is not None and s + shift < len(keys) and old[s + shift] == keys[s])
        return SlotPlan(tuple(s for s in changed if s not in moved), moved, shift)

    def _instruction(self, embedding: torch.Tensor) -> tuple[tuple[object, ...] | None, torch.Tensor | None]:
        """(what identifies the instruction embedding, its device copy if its keys/values are kept, else None).
        Kept while it is the same tensor, unmodified (its version counter), the same shape and dtype; a tensor made
        in inference mode has no version counter and is never kept."""
        try:
            identity: tuple[object, ...] | None = (id(embedding), embedding._version, tuple(embedding.shape),
                                                   embedding.dtype, str(embedding.device))
        except RuntimeError:
            identity = None
        seen = self.lang_seen
        if identity is None or seen is None or seen[0] != identity or seen[1] is not embedding:
            return identity, None
        return identity, seen[2]

    def _frame_tokens(self, frames: list[np.ndarray | None]) -> tuple[list[object], list[torch.Tensor]]:
        """SigLIP tokens of each frame, cached: a frame stays in the history for img_history_size calls and the
        background of an absent camera never changes, so a call encodes only its new frames, in one batch. Returns
        each frame's cache key and tokens."""
        # Arrays not seen before first: their keys need no comparison, so their encoding is launched before the
        # frames seen at earlier calls are compared with their copies (the comparisons overlap the GPU's work); a
        # frame found changed there (a camera refilling one array) is encoded after them.
        keys: list[object] = [None if f is not None and id(f) in self.seen else self._key(f) for f in frames]
        self._encode_new(keys, frames)
        keys = [self._key(f) if k is None else k for k, f in zip(keys, frames, strict=True)]
        self._encode_new(keys, frames)
        out = [self.token_cache[k] for k in keys]
        for k in keys:  # most recently used last; drop the oldest beyond two calls' worth
            self.token_cache[k] = self.token_cache.pop(k)
        while len(self.token_cache) > 2 * len(SLOTS) * self.history + 1:
            self.token_cache.pop(next(iter(self.token_cache)))
        for i in [i for i, s in self.seen.items() if s[2] not in self.token_cache]:
            self.pool.give(self.seen.pop(i)[1])
        return keys, out

    def _encode_new(self, keys: list[object], frames: list[np.ndarray | None]) -> None:
        """Encode the frames whose key (None: not known yet) has no tokens cached, from their copies (pinned on a
        GPU: uploaded from there, no staging)."""
        new = {k: None if f is None else self.seen[id(f)][1]
               for k, f in zip(keys, frames, strict=True) if k is not None and k not in self.token_cache}
        if new:
            self.token_cache.update(self._encode(new))

    def _key(self, frame: np.ndarray | None) -> object:
        """A frame's cache key: the same array object with the same content as when first seen (compared in full,
        so a camera that refills one buffer is never served stale tokens), else a new key. No hashing: comparing
        a 640 x 480 frame as 8-byte words costs ~0.03 ms, hashing it ~1 ms (policies/rdt/frames.py)."""
        if frame is None:
            return "background"
        seen = self.seen.get(id(frame))
        if seen is not None and seen[0] is frame and same_bytes(seen[1], frame):
            return seen[2]
        if seen is not None:
            self.pool.give(seen[1])
        self.frames_seen += 1
        copy = self.pool.take(frame) if frame.dtype == np.uint8 else frame.copy()
        self.seen[id(frame)] = (frame, copy, self.frames_seen)
        return self.frames_seen

    def _encode(self, new: dict[object, np.ndarray | None]) -> dict[object, torch.Tensor]:
        """Tokens of the new frames: the same-sized ones uploaded as one uint8 batch, then padding, resizing,
        normalisation and SigLIP on the GPU (one CUDA graph a batch size and frame size)."""
        like = next((f for f in new.values() if f is not None), None)
        prep = self.tower.prep
        frames = {k: f if f is not None else prep.blank(like) for k, f in new.items()}
        out: dict[object, torch.Tensor] = {}
        for shape in dict.fromkeys(f.shape for f in frames.values()):
            group = [k for k, f in frames.items() if f.shape == shape]
            batch = self._upload([frames[k] for k in group])
            if self.use_graphs:
                tokens = self._graph(self.encoders, (len(group), shape), self._tokens, {"frames": batch})(
                    {"frames": batch}).clone()
            else:
                tokens = self._tokens(batch)
            out.update({k: tokens[i:i + 1] for i, k in enumerate(group)})
        return out

    def _graph(self, table: dict[Any, Graphed], key: Any, fn: Any, example: dict[str, torch.Tensor]) -> Graphed:
        """The CUDA graph of `fn` for inputs shaped like `example`, captured at first use. A compiler failure
        does not stop inference: the policy stops compiling and captures the uncompiled function."""
        graph = table.get(key)
        if graph is None:
            try:
                graph = Graphed(fn, example)
            except Exception as exc:  # inductor and triton fail in many ways
                if not self.compiled:
                    raise
                log.warning("inference: " + compile_failed(exc, "capturing without it"))
                self.compiled = False
                self.denoise = self.model.model
                self.lang_kv, self.image_kv = self.model.model.lang_kv, self.model.model.image_kv
                graph = Graphed(fn, example)
            table[key] = graph
        return graph

    def _upload(self, frames: list[np.ndarray]) -> torch.Tensor:
        """The frames as one (N, H, W, 3) uint8 tensor on the device, through a pinned buffer kept per size (pinning
        memory anew costs milliseconds)."""
        if self.device.type != "cuda":
            return torch.from_numpy(np.stack(frames))
        direct = self.pool.upload(frames, self.device)
        if direct is not None:
            return direct
        shape = (len(frames), *frames[0].shape)
        staging = self.staging.get(shape)
        if staging is None:
            staging = self.staging[shape] = torch.empty(shape, dtype=torch.uint8).pin_memory()
        torch.cuda.current_stream().synchronize()  # the previous upload from this buffer has finished
        np.stack(frames, out=staging.numpy())
        return staging.to(self.device, non_blocking=True)

    def _tokens(self, frames: torch.Tensor) -> torch.Tensor:
        return self.tower.encode(self.tower.prep.pixels_batch(frames)).to(self.dtype)

    def _sample(self, plan: SlotPlan | None, fresh: bool, img: torch.Tensor, lang: torch.Tensor,
                state: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One chunk. `img`: every slot's tokens (plan None: their keys/values computed, not kept), or the tokens of
        the slots `plan.compute` (theirs computed into `kept`, the moved ones moved there, the others read from
        there). `fresh`: the language keys/values computed (and kept); else read from `kept_lang`."""
        length = lang.shape[1]

        def condition(lang_c: torch.Tensor, img_c: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
            lang_kv = self._keep_lang(self.lang_kv(lang_c)) if fresh else self.kept_lang[length]
            img_kv = (self.image_kv(img_c) if plan is None
                      else self.model.model.image_kv_slots(img_c, plan, self.per_image, self._kept(),
                                                           self._deltas() if plan.moved else None))
            return interleave(lang_kv, img_kv)

        lang_mask = torch.ones(lang.shape[:2], dtype=torch.bool, device=self.device)
        return sample_chunk(self.model, self.coef, lang, lang_mask, img, state, self.action_mask, self.freq, noise,
                            self.steps, self.denoise, condition, self._embeddings())

    @torch.no_grad()
    def _embeddings(self) -> list[torch.Tensor]:
        """Each solver step's embeddings of its timestep and the control frequency (Rdt.step_embeddings): fixed
        for the policy's weights, so computed once (not in every call's graph; five steps' ~40 kernels)."""
        if self.embeddings is None:
            self.embeddings = [self.model.model.step_embeddings(t, self.freq, 1) for t in self.steps]
        return self.embeddings

    def _keep_lang(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copy the language blocks' keys/values into the kept ones of their length (allocated at first use)."""
        length = kv[0][0].shape[2]
        kept = self.kept_lang.get(length)
        if kept is None:
            kept = self.kept_lang[length] = [(torch.empty_like(k), torch.empty_like(v)) for k, v in kv]
        for (dst_k, dst_v), (k, v) in zip(kept, kv, strict=True):
            dst_k.copy_(k)
            dst_v.copy_(v)
        return kept

    def _kept(self) -> list[KeptKV]:
        """Each image block's kept (pre-norm keys, keys, values), allocated at first use. With one history frame
        nothing ever moves: the pre-norm keys are never read again, and share the keys' memory (normalised in
        place)."""
        if self.kept is None:
            cfg = self.cfg
            shape = (1, cfg.img_cond_len, cfg.num_heads, cfg.hidden_size // cfg.num_heads)
            self.kept = []
            for _ in range(cfg.depth // 2):
                k, v = (torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(2))
                pre = k if self.history == 1 else torch.zeros_like(k)
                self.kept.append((pre, k, v))
        return self.kept

    def _deltas(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.deltas is None:
            self.deltas = self.model.model.slot_deltas(self.per_image, len(SLOTS))
        return self.deltas


def load(checkpoint: Path | str, device: str | torch.device | None = None, weights: str = "ema",
         siglip: Path | None = None, dtype: torch.dtype | None = None, compile: bool = False) -> RdtPolicy:
    """The policy from a checkpoint-<step>/ folder (or the newest one in a checkpoints folder); `compile`: see
    RdtPolicy."""
    folder = resolve(Path(checkpoint))
    meta = json.loads((folder / "config.json").read_text())
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    model = RdtRunner(RdtConfig(**meta["model"]))
    source = checkpoint_weights(folder, weights)
    load_strict(model, read_state_dict(source), source)
    return RdtPolicy(model.to(dev, dt).eval(), meta, dev, dt, siglip, compile=compile)
