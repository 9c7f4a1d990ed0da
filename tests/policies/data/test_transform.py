import numpy as np

from policies.data.transform import TimeOptions, select_frames, shift_actions
from robot.formats import binarize


def test_binarize() -> None:
    assert binarize(np.array([0.0, 0.49, 0.5, 0.7, 1.0]), 0.5).tolist() == [0, 0, 1, 1, 1]


def test_stride_keeps_first_and_last() -> None:
    q = np.zeros((10, 8))
    assert select_frames(q, np.ones(10), TimeOptions(stride=3)).tolist() == [0, 3, 6, 9]
    assert select_frames(np.zeros((11, 8)), np.ones(11), TimeOptions(stride=3)).tolist() == [0, 3, 6, 9, 10]


def test_keyframes_keep_gripper_changes_and_real_motion() -> None:
    q = np.zeros((10, 8))
    q[6:, 0] = 0.5  # the arm moves once, at frame 6
    grip = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], float)  # closes at frame 4
    keep = select_frames(q, grip, TimeOptions(keyframes=True, keyframe_joint_delta=0.1))
    assert keep.tolist() == [0, 3, 4, 6, 9]


def test_action_shift_rule() -> None:
    s = np.arange(5, dtype=float)[:, None]
    state, action, n = shift_actions(s, s * 10, "next_state")
    assert n == 4 and state[:, 0].tolist() == [0, 1, 2, 3] and action[:, 0].tolist() == [1, 2, 3, 4]
    state, action, n = shift_actions(s, s * 10, "control")
    assert n == 5 and action[:, 0].tolist() == [0, 10, 20, 30, 40]
