from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from policies.data.convert import ConvertOptions, convert
from policies.data.demos import GelloOptions
from policies.data.episodes import decode_jpeg
from policies.data.sample import generate
from policies.rdt.convert import RdtDataError, write_rdt
from policies.rdt.embed import encode_instructions, save_tiny_t5

TEXTS = ("Pick up the red cube.", "Move the cube to the right.")


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("rdt")
    generate(root / "raw", episodes=2, steps=10)
    opts = ConvertOptions(task="pick", gello=GelloOptions(need_depth=False), workers=1)
    return convert(root / "raw", root / "out", opts).episodes


def test_rdt_layout_padding_and_embeddings(episodes: list[Path], tmp_path: Path) -> None:
    t5 = save_tiny_t5(tmp_path / "t5", " ".join(TEXTS).split())
    emb = encode_instructions(list(TEXTS), t5)
    assert all(e.ndim == 2 and e.shape[1] == 32 and e.dtype == torch.bfloat16 for e in emb)
    rep = write_rdt(episodes, tmp_path / "pick-demo_clean-2", {"cam_high": "front"}, (64, 48), emb, TEXTS)
    assert rep.episodes == 2 and rep.samples == 18 and rep.state_dim == 8
    path = tmp_path / "pick-demo_clean-2" / "episode_1" / "episode_1.hdf5"
    with h5py.File(path, "r") as f:
        assert f["action"].shape == (9, 8) and f["action"].dtype == np.float32
        assert f["observations/qpos"].shape == (9, 8)
        np.testing.assert_array_equal(f["action"][:-1], f["observations/qpos"][1:])  # next-state actions
        assert f["observations/right_arm_dim"][0] == 7 and f["observations/left_arm_dim"][0] == 0
        high = decode_jpeg(f["observations/images/cam_high"][0])
        wrist = decode_jpeg(f["observations/images/cam_left_wrist"][0])
        assert high.shape == (48, 64, 3) and wrist.shape == (48, 64, 3)
        assert wrist.max() <= 8 and high.max() > 100  # padded black, not a copy of cam_high
        assert f["observations/images_mask/cam_high"][()].all()
        assert not f["observations/images_mask/cam_left_wrist"][()].any()
    loaded = torch.load(path.parent / "instructions" / "lang_embed_1.pt")
    assert loaded.ndim == 2 and torch.equal(loaded, emb[1])


def test_still_episode_is_refused_before_writing(episodes: list[Path], tmp_path: Path) -> None:
    still = tmp_path / "episode9.hdf5"
    still.write_bytes(episodes[0].read_bytes())
    with h5py.File(still, "a") as f:
        vec = f["joint_action/vector"][()]
        f["joint_action/vector"][...] = np.repeat(vec[:1], len(vec), axis=0)
    with pytest.raises(RdtDataError, match=r"never move more than 0\.01"):
        write_rdt([episodes[0], still], tmp_path / "out", {"cam_high": "front"}, (64, 48))
    assert not (tmp_path / "out").exists()
