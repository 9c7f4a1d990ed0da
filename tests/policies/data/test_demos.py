import pickle
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from policies.data.demos import GelloOptions, find_episodes, read_episode
from policies.data.sample import episode_arrays, generate


def write_steps(folder: Path, steps: list[dict[str, np.ndarray]], start: datetime) -> None:
    folder.mkdir(parents=True)
    for t, s in enumerate(steps):
        (folder / f"{(start + timedelta(seconds=t / 10)).isoformat(timespec='microseconds')}.pkl").write_bytes(
            pickle.dumps(s))


def test_per_step_folders_ordered_by_recorded_time_not_name(tmp_path: Path) -> None:
    steps = episode_arrays(0, steps=5)
    # GELLO names folders MMDD_HHMMSS: December 2024 sorts after January 2025 by name.
    write_steps(tmp_path / "gello" / "0101_000001", steps, datetime(2025, 1, 1, 0, 0, 1))
    write_steps(tmp_path / "gello" / "1231_235959", steps, datetime(2024, 12, 31, 23, 59, 59))
    assert [p.name for p in find_episodes(tmp_path)] == ["1231_235959", "0101_000001"]


def test_read_episode_quirks(tmp_path: Path) -> None:
    generate(tmp_path, episodes=1, steps=20)
    ep = read_episode(find_episodes(tmp_path)[0], GelloOptions())
    raw = episode_arrays(0, steps=20)
    assert ep.problems == [] and ep.length == 20
    np.testing.assert_array_equal(ep.joint_positions, np.stack([s["joint_positions"] for s in raw]))
    # Panda: command 1.0 = closed, observation 1.0 = open -> stored in the observation's sense.
    np.testing.assert_allclose(ep.control[:, -1], 1.0 - np.stack([s["control"][-1] for s in raw]))
    # Recorded velocities are a copy of the positions; derived ones are position differences over time (0.1 s).
    np.testing.assert_allclose(ep.joint_velocities[5], (ep.joint_positions[5] - ep.joint_positions[4]) / 0.1, rtol=1e-6)
    assert ep.depth is not None and ep.depth.shape == (20, 120, 160) and ep.depth.dtype == np.uint16
    recorded = read_episode(find_episodes(tmp_path)[0], GelloOptions(velocities="recorded", command_gripper="open_is_one"))
    np.testing.assert_array_equal(recorded.joint_velocities, recorded.joint_positions)
    np.testing.assert_array_equal(recorded.control[:, -1], np.stack([s["control"][-1] for s in raw]))


def test_single_file_episodes_dict_and_list(tmp_path: Path) -> None:
    steps = episode_arrays(1, steps=6)
    stacked = {k: np.stack([s[k] for s in steps]) for k in steps[0]}
    (tmp_path / "ep_a.pkl").write_bytes(pickle.dumps(stacked))
    (tmp_path / "ep_b.pkl").write_bytes(pickle.dumps(steps))
    eps = [read_episode(p, GelloOptions()) for p in find_episodes(tmp_path)]
    assert [e.name for e in eps] == ["ep_a.pkl", "ep_b.pkl"]
    for e in eps:
        assert e.problems == [] and e.length == 6
    np.testing.assert_array_equal(eps[0].joint_positions, eps[1].joint_positions)


def test_every_problem_is_listed_with_episode_step_and_key(tmp_path: Path) -> None:
    steps = episode_arrays(0, steps=4)
    del steps[1]["front_depth"]
    steps[2]["joint_positions"] = np.full(8, np.nan)
    steps[3]["control"] = np.zeros(9)
    write_steps(tmp_path / "a" / "ep", steps, datetime(2025, 1, 1))
    one = episode_arrays(0, steps=1)
    write_steps(tmp_path / "b" / "short", one, datetime(2025, 2, 1))
    stacked = {k: np.stack([s[k] for s in episode_arrays(0, steps=3)]) for k in one[0]}
    stacked["control"] = stacked["control"][:2]
    (tmp_path / "c.pkl").write_bytes(pickle.dumps(stacked))
    text = "\n".join(str(p) for src in find_episodes(tmp_path) for p in read_episode(src, GelloOptions()).problems)
    assert "ep step 1: front_depth: missing (point clouds need depth" in text
    assert "ep step 2: joint_positions: 8 NaN/inf value(s)" in text
    assert "ep step 3: control: shape (9,) differs from step 0's (8,)" in text
    assert "short: 1 step(s): an episode needs at least 2" in text
    assert "c.pkl: control: has 2 steps, joint_positions has 3" in text
