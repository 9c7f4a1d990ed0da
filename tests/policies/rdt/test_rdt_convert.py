from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from policies.data.convert import ConvertOptions, convert
from policies.data.demos import GelloOptions
from policies.data.sample import generate
from policies.rdt.convert import RdtDataError, write_rdt
from policies.rdt.embed import encode_instructions, save_tiny_t5
from robot.formats import decode_jpeg

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


def test_fine_tuning_samples_follow_upstream_rules(episodes: list[Path], tmp_path: Path) -> None:
    from policies.rdt.dataset import RdtSamples, dataset_stat, index_episodes
    from policies.rdt.state_space import FRANKA

    t5 = save_tiny_t5(tmp_path / "t5", " ".join(TEXTS).split())
    write_rdt(episodes, tmp_path / "rdt", {"cam_high": "front"}, (64, 48), encode_instructions(list(TEXTS), t5), TEXTS)
    data = RdtSamples(tmp_path / "rdt", FRANKA, chunk=16, img_history=2)
    ep = data.episodes[0]
    s = data.at(ep, 0)
    assert s["state"].shape == (1, 128) and s["actions"].shape == (16, 128)
    assert np.all(s["actions"][9:] == s["actions"][8])  # 9 steps left: the chunk repeats the last one
    assert s["image_masks"]["cam_high"].tolist() == [False, True]  # history front-padded at step 0
    assert not s["image_masks"]["cam_left_wrist"].any()  # the robot has no such camera
    assert s["images"]["cam_high"][1].shape == (48, 64, 3)
    assert s["lang_embed_path"].name == "lang_embed_0.pt"
    rng = np.random.default_rng(0)
    steps = [data.sample(rng)["step"] for _ in range(20)]
    assert min(steps) >= max(ep.first_idx - 1, 0)
    stat = dataset_stat(index_episodes(tmp_path / "rdt"), FRANKA)
    assert len(stat["agilex"]["state_mean"]) == 128 and stat["agilex"]["state_std"][20] == 0.0
