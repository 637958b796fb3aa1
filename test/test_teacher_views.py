"""Multi-view selection, Eq. 1 (training/teacher/view_selection.py)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from training.teacher.view_selection import rotation_angle, select_views, select_views_batch


def _poses(yaws_deg):
    """(F, 4, 4) poses rotated about z by the given yaws (translations irrelevant to Eq. 1)."""
    poses = np.tile(np.eye(4), (len(yaws_deg), 1, 1))
    poses[:, :3, :3] = Rotation.from_euler("z", np.asarray(yaws_deg, float)[:, None], degrees=True).as_matrix()
    poses[:, :3, 3] = np.arange(len(yaws_deg))[:, None]
    return poses


def test_rotation_angle_of_known_rotations():
    rz90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert rotation_angle(np.eye(3), rz90) == pytest.approx(90.0)
    assert rotation_angle(rz90, rz90) == pytest.approx(0.0, abs=1e-5)
    flip = np.diag([1.0, -1.0, -1.0])  # 180 degrees about x
    assert rotation_angle(np.eye(3), flip) == pytest.approx(180.0)
    r = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    assert rotation_angle(r, r @ Rotation.from_rotvec([0, 0.1, 0]).as_matrix()) == pytest.approx(np.degrees(0.1))
    # broadcasting and rounding: cos slightly above 1 must not give NaN
    batch = rotation_angle(np.eye(3)[None] * (1 + 1e-12), np.stack([np.eye(3), rz90]))
    assert batch.shape == (2,) and np.isfinite(batch).all()


def test_near_duplicates_dropped_and_order_kept():
    yaws = [0.0, 2.0, 40.0, 43.0, 47.0, 90.0, 91.0, 180.0]
    counts = np.array([50, 90, 80, 70, 60, 100, 95, 10])
    # ranked by count: 5 (90), 6 (91), 1 (2), 2 (40), 3 (43), 4 (47) | 0, 7 beyond k_pre = 6
    # walk: keep 5; 6 is 1 deg from 5: drop; keep 1; keep 2; 3 is 3 deg from 2: drop; 4 is 7 deg from 2: keep
    assert select_views(counts, _poses(yaws), k_pre=6, angle_threshold_deg=5.0) == [5, 1, 2, 4]


def test_k_pre_ties_and_min_pixels():
    yaws = [0.0, 30.0, 60.0, 90.0, 120.0]
    counts = np.array([5, 7, 7, 0, 7])
    assert select_views(counts, _poses(yaws), k_pre=2, angle_threshold_deg=5.0) == [1, 2]  # ties by frame order
    assert select_views(counts, _poses(yaws), k_pre=5, angle_threshold_deg=5.0) == [1, 2, 4, 0]  # 0 pixels never
    assert select_views(counts, _poses(yaws), k_pre=5, angle_threshold_deg=5.0, min_pixels=6) == [1, 2, 4]
    assert select_views(np.zeros(5, int), _poses(yaws)) == []
    # threshold 0 keeps every pre-selected frame, even identical poses
    assert select_views(np.array([3, 2, 1]), _poses([0, 0, 0]), angle_threshold_deg=0.0) == [0, 1, 2]
    assert select_views(np.array([3, 2, 1]), _poses([0, 0, 0]), angle_threshold_deg=1.0) == [0]


def test_batch_matches_single_instance():
    rng = np.random.default_rng(0)
    poses = np.tile(np.eye(4), (12, 1, 1))
    poses[:, :3, :3] = Rotation.from_euler("z", rng.choice([0.0, 3.0, 10.0, 60.0], (12, 1)), degrees=True).as_matrix()
    counts = rng.integers(0, 20, size=(7, 12))
    batch = select_views_batch(counts, poses, k_pre=6, angle_threshold_deg=5.0)
    assert batch == [select_views(c, poses, k_pre=6, angle_threshold_deg=5.0) for c in counts]
    assert all(len(b) <= 6 for b in batch)


def test_bad_inputs():
    with pytest.raises(ValueError, match="frames"):
        select_views(np.ones(3), _poses([0, 1]))
    with pytest.raises(ValueError, match="k_pre"):
        select_views(np.ones(2), _poses([0, 1]), k_pre=0)
    with pytest.raises(ValueError, match="rotations"):
        rotation_angle(np.eye(4), np.eye(3))
