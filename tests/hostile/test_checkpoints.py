"""Checkpoints as a malicious file, a flipped disk block, another job or a killed write would leave them: nothing in
a file runs, altered and foreign checkpoints are skipped with the reason, and upstream DP3's key contract holds
both ways (tests/fixtures/upstream: names, shapes and parameter order read from upstream's own model)."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from policies.checkpoint_io import CheckpointError, load
from policies.data.convert import ConvertOptions, convert
from policies.data.pointcloud import CloudSpec
from policies.data.sample import CX, CY, FX, FY, generate
from policies.data.transform import TimeOptions
from policies.dp3 import checkpoints
from policies.dp3.config import Dp3Train
from policies.dp3.data import load_buffer
from policies.dp3.model import DP3, Dp3Config
from policies.dp3.train import train
from policies.dp3.zarr_buffer import write_buffer
from runner.atomic import remove_stale_temps

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"
CFG = Dp3Config(state_dim=8, action_dim=8, num_points=64, down_dims=(16, 32, 64))
FAST = Dp3Train(epochs=200, batch_size=16, lr=1e-3, lr_warmup_steps=5, checkpoint_every=3, val_every=1000,
                     log_every=100, seed=0, keep_checkpoints=5)


class Payload:
    """Pickled, it would create `marker` when loaded: the proof a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))  # creating the file is the side effect


@pytest.fixture(scope="module")
def buffer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dp3h")
    generate(root / "raw", episodes=3, steps=24)
    rep = convert(root / "raw", root / "out", ConvertOptions(task="pick", cloud=CloudSpec(FX, FY, CX, CY, num_points=64),
                                                             workers=1, time=TimeOptions(binarize_gripper=True)))
    return write_buffer(rep.episodes, root / "out" / "pick-demo_clean-3.zarr").path


def _train(buffer: Path, tmp: Path, steps: int, resume: bool = False, cfg: Dp3Config = CFG, job: str = "a",
           say: list[str] | None = None):  # type: ignore[no-untyped-def]
    (tmp / "run").mkdir(parents=True, exist_ok=True)
    s = FAST.model_copy(update={"max_steps": steps})
    return train(cfg, load_buffer(buffer), s, ckpt_dir=tmp / "ckpt", run_dir=tmp / "run",
                 device=torch.device("cpu"), resume=resume, extra={"job": job},
                 say=(say.append if say is not None else lambda m: None))


def test_a_pickle_payload_in_a_checkpoint_never_runs(buffer: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    _train(buffer, tmp_path, 3)
    marker = tmp_path / "pwned"
    evil = tmp_path / "ckpt" / "step-99.ckpt"  # the highest step: resume tries it first
    torch.save({"state_dicts": {}, "cfg": {}, "x": Payload(marker)}, evil)
    said: list[str] = []
    result = _train(buffer, tmp_path, 6, resume=True, say=said)
    assert not marker.exists()
    assert "refused" in caplog.text and any("resumed from" in m and "step-3" in m for m in said)
    assert result.global_step == 6
    for loader in (load, checkpoints.load_file):
        with pytest.raises(CheckpointError, match="refused"):
            loader(evil)
    from policies.dp3.upstream import read_upstream

    with pytest.raises(CheckpointError, match="refused"):
        read_upstream(evil)
    assert not marker.exists()


@pytest.mark.parametrize("victim", ["/etc/passwd", "/dev/null"])
def test_a_file_that_is_not_a_checkpoint_is_refused_by_name(victim: str) -> None:
    with pytest.raises(CheckpointError, match=f"{victim}: not a checkpoint"):
        load(Path(victim))


def test_flipped_bytes_are_caught_by_the_manifest_checksum(buffer: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    _train(buffer, tmp_path, 3)
    _train(buffer, tmp_path, 6, resume=True)
    newest = tmp_path / "ckpt" / "step-6.ckpt"
    data = bytearray(newest.read_bytes())
    for i in range(200):  # 200 bytes inside the tensor data, where the zip still reads
        data[len(data) // 2 + i * 7] ^= 0xFF
    newest.write_bytes(bytes(data))
    found = checkpoints.load_latest(tmp_path / "ckpt")
    assert found is not None and found[0].name == "step-3.ckpt"
    assert "step-6.ckpt: checksum mismatch" in caplog.text


def test_foreign_checkpoints_are_skipped_with_the_reason(buffer: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    _train(buffer, tmp_path, 3, job="a")
    _train(buffer, tmp_path / "other", 6, job="b")  # another job's checkpoint copied in
    (tmp_path / "ckpt" / "step-6.ckpt").write_bytes((tmp_path / "other" / "ckpt" / "step-6.ckpt").read_bytes())
    big = replace(CFG, down_dims=(32, 64, 128))
    _train(buffer, tmp_path / "big", 9, cfg=big, job="a")  # this job, another model size
    (tmp_path / "ckpt" / "step-9.ckpt").write_bytes((tmp_path / "big" / "ckpt" / "step-9.ckpt").read_bytes())
    said: list[str] = []
    result = _train(buffer, tmp_path, 6, resume=True, say=said)
    err = caplog.text
    assert "step-9.ckpt: its model configuration differs: down_dims [32, 64, 128] (job: [16, 32, 64])" in err
    assert "step-6.ckpt: it was written by job 'b', not 'a'" in err
    assert any("resumed from" in m and "step-3.ckpt" in m for m in said) and result.global_step == 6


def test_a_killed_write_leaves_no_temp_file_behind(buffer: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    dead = folder / ".step-40.ckpt.4194000.tmp"  # a pid that is not running
    dead.write_bytes(b"x" * 1000)
    live = folder / f".step-41.ckpt.{os.getppid()}.tmp"  # a live writer's file is left alone
    live.write_bytes(b"x")
    assert remove_stale_temps(folder, alive=lambda pid: pid == os.getppid()) == [dead]
    _train(buffer, tmp_path, 3)
    assert not dead.exists() and live.exists()


# ---- upstream DP3 (RoboTwin) interop: the fixture is facts (names, shapes, order), not upstream code ----

def _upstream() -> dict:  # type: ignore[type-arg]
    return json.loads((FIXTURES / "dp3_robotwin_franka.json").read_text())


def _ours_at_upstream_config() -> DP3:
    c = _upstream()["config"]
    cfg = Dp3Config(state_dim=c["state_dim"], action_dim=c["action_dim"], num_points=c["num_points"],
                    down_dims=tuple(c["down_dims"]), encoder_output_dim=c["encoder_output_dim"],
                    diffusion_step_embed_dim=c["diffusion_step_embed_dim"])
    model = DP3(cfg)
    g = torch.Generator().manual_seed(0)
    model.normalizer.fit({"action": torch.rand(20, 8, generator=g), "agent_pos": torch.rand(20, 8, generator=g),
                          "point_cloud": torch.rand(20, 64, 6, generator=g)})
    return model


def test_upstream_state_dict_loads_strictly_here_and_ours_there() -> None:
    up = _upstream()["state_dict"]
    model = _ours_at_upstream_config()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == up  # same names and shapes: upstream's strict load_state_dict takes ours
    theirs = {k: torch.zeros(shape) for k, shape in up.items()}
    model.load_state_dict(theirs, strict=True)  # and ours takes theirs
    assert "mask_generator._dummy_variable" in ours and "_dummy_variable" in ours


def test_export_meets_upstreams_workspace_load_contract(buffer: Path, tmp_path: Path) -> None:
    from policies.dp3.upstream import export_upstream, read_upstream, upstream_parameter_order

    result = _train(buffer, tmp_path, 3)
    out = export_upstream(result.last_checkpoint, tmp_path / "up" / "3000.ckpt")
    payload = read_upstream(out)
    assert set(payload) == {"cfg", "state_dicts", "pickles"}
    assert payload["cfg"]["policy"]["_target_"] == "diffusion_policy_3d.policy.dp3.DP3"
    assert payload["cfg"]["shape_meta"]["obs"]["agent_pos"]["shape"] == [8]
    # TrainDP3Workspace.load_payload: each state dict strictly into its object, then dill.loads of the pickles.
    model = checkpoints.load_file(result.last_checkpoint)
    fresh = DP3(Dp3Config(**{**model["cfg"]["model"], "down_dims": tuple(model["cfg"]["model"]["down_dims"]),
                             "state_mlp_size": tuple(model["cfg"]["model"]["state_mlp_size"])}))
    fresh.normalizer.load_state_dict({k[len("normalizer."):]: v for k, v in payload["state_dicts"]["model"].items()
                                      if k.startswith("normalizer.")})
    for part in ("model", "ema_model"):
        fresh.load_state_dict(payload["state_dicts"][part], strict=True)
    # Upstream builds AdamW over policy.parameters(), every parameter in its own order: the exported state must
    # load there and step (shapes per index right).
    names = upstream_parameter_order([n for n, _ in fresh.named_parameters()])
    sd = dict(fresh.named_parameters())
    params = [torch.nn.Parameter(sd[n].detach().clone()) for n in names]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.95, 0.999), eps=1e-8, weight_decay=1e-6)
    opt.load_state_dict(payload["state_dicts"]["optimizer"])
    for n, p in zip(names, params, strict=True):
        st = opt.state.get(p)
        if st:
            assert st["exp_avg"].shape == p.shape, n
            p.grad = torch.zeros_like(p)
    opt.step()
    assert pickle.loads(payload["pickles"]["global_step"]) == 3 and pickle.loads(payload["pickles"]["epoch"]) >= 0


def test_upstream_parameter_order_matches_the_fixture() -> None:
    from policies.dp3.upstream import upstream_parameter_order

    model = _ours_at_upstream_config()
    assert upstream_parameter_order([n for n, _ in model.named_parameters()]) == _upstream()["parameters_in_order"]


def test_an_upstream_payload_with_omegaconf_and_dill_bytes_imports(buffer: Path, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from policies.dp3.upstream import import_upstream

    result = _train(buffer, tmp_path, 3)
    ours = checkpoints.load_file(result.last_checkpoint)
    theirs = {"cfg": OmegaConf.create({"horizon": 8, "policy": {"down_dims": [16, 32, 64]}}),
              "state_dicts": {"model": ours["state_dicts"]["model"], "ema_model": ours["state_dicts"]["ema_model"],
                              "optimizer": {}},
              "pickles": {"global_step": pickle.dumps(3), "_output_dir": pickle.dumps(str(tmp_path))}}
    torch.save(theirs, tmp_path / "upstream.ckpt")
    model = import_upstream(tmp_path / "upstream.ckpt", result.last_checkpoint)
    w = ours["state_dicts"]["ema_model"]
    assert all(torch.equal(v, w[k]) for k, v in model.state_dict().items() if k in w)
    assert asdict(model.cfg)["down_dims"] == (16, 32, 64)


def test_rdt_checkpoint_pickles_are_checked_before_accelerate_or_deepspeed_load_them(tmp_path: Path) -> None:
    from policies.rdt.checkpoints import COMPLETE, RdtStore, verify

    marker = tmp_path / "pwned"
    good, bad = tmp_path / "checkpoint-1", tmp_path / "checkpoint-2"
    for folder in (good, bad):
        (folder / "pytorch_model").mkdir(parents=True)
        torch.save({"module": {"w": torch.ones(2)}}, folder / "pytorch_model" / "mp_rank_00_model_states.pt")
        (folder / COMPLETE).write_text(json.dumps({"step": int(folder.name.split("-")[1])}))  # no digest: an old one
    torch.save({"x": Payload(marker)}, bad / "random_states_0.pkl")
    why = verify(bad)
    assert why is not None and why.startswith("random_states_0.pkl: refused: it names io.open")
    found = RdtStore(tmp_path).latest()
    assert found is not None and found[1] == good and not marker.exists()


def test_upstream_rdt1b_keys_load_strictly_both_ways() -> None:
    from policies.rdt.model import RdtConfig, RdtRunner

    up = json.loads((FIXTURES / "rdt1b_base.json").read_text())
    with torch.device("meta"):
        model = RdtRunner(RdtConfig())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(up["state_dict"]) == 618 and ours == up["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == up["parameters"]
    with torch.device("meta"):
        theirs = {k: torch.empty(shape) for k, shape in up["state_dict"].items()}
    model.load_state_dict(theirs, strict=True, assign=True)  # ours takes theirs; theirs ours: same names and shapes


@pytest.mark.parametrize("layout", ["release", "deepspeed"])
def test_the_official_file_layouts_are_read_without_running_code(tmp_path: Path, layout: str) -> None:
    from policies.rdt.model import RdtConfig, RdtRunner
    from policies.rdt.weights import WeightsError, read_state_dict

    model = RdtRunner(RdtConfig.tiny())
    sd = model.state_dict()
    if layout == "release":  # the hub release: config.json + pytorch_model.bin (PyTorchModelHubMixin)
        (tmp_path / "config.json").write_text("{}")
        torch.save(sd, tmp_path / "pytorch_model.bin")
        victim = tmp_path / "pytorch_model.bin"
    else:  # an RDT training checkpoint: DeepSpeed's model states with the weights under "module"
        (tmp_path / "pytorch_model").mkdir()
        torch.save({"module": sd, "ds_version": "0.16", "buffer_names": []},
                   tmp_path / "pytorch_model" / "mp_rank_00_model_states.pt")
        victim = tmp_path / "pytorch_model" / "mp_rank_00_model_states.pt"
    loaded = read_state_dict(tmp_path)
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    marker = tmp_path / "pwned"
    torch.save({"module": sd, "x": Payload(marker)}, victim)
    with pytest.raises(WeightsError, match="refused"):
        read_state_dict(tmp_path)
    assert not marker.exists()


def test_finding_the_newest_reads_checksums_not_whole_checkpoints(buffer: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest records each file's job and model: only a file an older runner recorded without them is loaded
    to tell whether it is this job's."""
    _train(buffer, tmp_path, 6)  # checkpoints at 3 and 6
    loaded: list[str] = []
    real = checkpoints.load_file
    monkeypatch.setattr(checkpoints, "load_file", lambda p, m="cpu": loaded.append(p.name) or real(p, m))
    store = checkpoints.Dp3Store(tmp_path / "ckpt")
    assert store.latest({"job": "a", "model": asdict(CFG)}) == (6, tmp_path / "ckpt" / "step-6.ckpt")
    assert loaded == []
    assert store.check(tmp_path / "ckpt" / "step-6.ckpt", {"job": "b"}) == "it was written by job 'a', not 'b'"
    manifest = json.loads((tmp_path / "ckpt" / checkpoints.MANIFEST).read_text())
    for c in manifest["checkpoints"]:
        c.pop("cfg")  # as a runner before the store wrote it
    (tmp_path / "ckpt" / checkpoints.MANIFEST).write_text(json.dumps(manifest))
    assert store.latest({"job": "a", "model": asdict(CFG)}) == (6, tmp_path / "ckpt" / "step-6.ckpt")
    assert loaded == ["step-6.ckpt"]


def _getattr_pickle(cls: bytes, name: bytes, again: bytes = b"") -> bytes:
    """A protocol-2 stream calling getattr(<cls>, <name>) as Python pickles an enum member by name, then `again`."""
    n = len(name).to_bytes(4, "little")
    return (b"\x80\x02c__builtin__\ngetattr\nq\x00c" + cls + b"\nq\x01X" + n + name + b"q\x02\x86R" + again + b".")


def test_getattr_is_allowed_only_to_name_a_framework_enum_member() -> None:
    """DeepSpeed's optimizer state (bookworm's Python 3.11) pickles ZeroStageEnum.gradients as
    getattr(ZeroStageEnum, 'gradients'); `runner run jobs/sample_rdt.yaml` refused every checkpoint until this was
    allowed. getattr on anything else, or of a private name, could reach any callable and stays refused."""
    from policies.checkpoint_io import getattr_only_names_members, pickle_globals

    enum = b"deepspeed.runtime.zero.config ZeroStageEnum".replace(b" ", b"\n")
    good = _getattr_pickle(enum, b"gradients")
    assert ("__builtin__", "getattr") in pickle_globals(good)
    assert getattr_only_names_members(good)
    # the memoised getattr and class, used again the same way (as a second member would be)
    reused = _getattr_pickle(enum, b"gradients", b"0h\x00h\x01X\x0a\x00\x00\x00optimizers\x86R")
    assert getattr_only_names_members(reused)
    for bad in (_getattr_pickle(enum, b"__class__"), _getattr_pickle(enum, b"_value2member_map_"),
                _getattr_pickle(b"os\nsystem", b"x"), _getattr_pickle(b"builtins\nstr", b"join"),
                _getattr_pickle(enum, b"gradients", b"0h\x00cos\nsystem\nX\x01\x00\x00\x00x\x86R")):
        assert not getattr_only_names_members(bad), bad
