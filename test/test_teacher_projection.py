"""Projection of instance points into frames (training/teacher/projection.py)."""

import numpy as np
import pytest

from training.data.types import Frame
from training.teacher.projection import point_visibility, project_instances, visible_counts

H, W = 6, 8
K = np.array([[10.0, 0.0, 4.0], [0.0, 10.0, 3.0], [0.0, 0.0, 1.0]])


def _frame(pose=np.eye(4), depth=None, index=0):
    if depth is None:
        depth = np.full((H, W), 2.0, dtype=np.float32)
        depth[0, 0] = 0.0  # no measurement
    return Frame(index=index, color=np.zeros((H, W, 3), np.uint8), depth=depth, intrinsics=K, pose=pose)


# camera-space points; pixel u = floor(10 x / z + 4 + 0.5), v = floor(10 y / z + 3 + 0.5)
CAM_POINTS = np.array([
    [0.0, 0.0, 2.0],     # 0: pixel (u=4, v=3), on the depth surface: visible
    [0.0, 0.0, 3.0],     # 1: same pixel, 1 m behind the surface: occluded
    [0.2, 0.0, 2.0],     # 2: pixel (5, 3): visible
    [0.21, 0.0, 2.0],    # 3: also pixel (5, 3): visible, same pixel as 2
    [10.0, 0.0, 2.0],    # 4: u = 54, outside the image
    [0.0, 0.0, -2.0],    # 5: behind the camera
    [-0.8, -0.6, 2.0],   # 6: pixel (0, 0) where the sensor has no depth
    [0.4, 0.2, 2.05],    # 7: pixel (6, 4), 5 cm off the surface: visible at 0.1, not at 0.01
])
# instances (may overlap): A = {0, 2, 3}, B = {1, 4, 5}, C = {0, 6, 7}
MASKS = np.zeros((3, len(CAM_POINTS)), dtype=bool)
MASKS[0, [0, 2, 3]] = True
MASKS[1, [1, 4, 5]] = True
MASKS[2, [0, 6, 7]] = True


def _pose(angle_deg=30.0, t=(1.0, -2.0, 0.5)):
    a = np.radians(angle_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    pose = np.eye(4)
    pose[:3, :3] = rz @ rx
    pose[:3, 3] = t
    return pose


@pytest.mark.parametrize("pose", [np.eye(4), _pose()])
def test_visibility_occlusion_and_bounds(pose):
    world = CAM_POINTS @ pose[:3, :3].T + pose[:3, 3]
    visible, pixel = point_visibility(world, _frame(pose), depth_threshold=0.1)
    assert visible.tolist() == [True, False, True, True, False, False, False, True]
    assert pixel[visible].tolist() == [3 * W + 4, 3 * W + 5, 3 * W + 5, 4 * W + 6]
    assert (pixel[~visible] == -1).all()


def test_counts_are_distinct_pixels_and_masks_match():
    proj = project_instances(CAM_POINTS, MASKS, _frame(), depth_threshold=0.1)
    assert proj.counts.tolist() == [2, 0, 2]
    a = np.zeros((H, W), bool)
    a[3, 4] = a[3, 5] = True
    np.testing.assert_array_equal(proj.mask(0), a)
    assert not proj.mask(1).any()
    c = np.zeros((H, W), bool)
    c[3, 4] = c[4, 6] = True
    np.testing.assert_array_equal(proj.masks([2, 0]), np.stack([c, a]))
    assert proj.masks().shape == (3, H, W)
    assert proj.point_uv[2].tolist() == [5, 3] and proj.point_uv[1].tolist() == [-1, -1]


def test_depth_threshold_is_applied():
    proj = project_instances(CAM_POINTS, MASKS, _frame(), depth_threshold=0.01)
    assert proj.counts.tolist() == [2, 0, 1]  # point 7 (5 cm off) drops out


def test_instance_ids_equal_bool_masks_for_disjoint_instances():
    ids = np.array([1, 2, 1, 1, 2, 2, 0, 3])  # instance index = id - 1
    masks = np.stack([ids == i for i in (1, 2, 3)])
    a = project_instances(CAM_POINTS, ids, _frame(), 0.1)
    b = project_instances(CAM_POINTS, masks, _frame(), 0.1)
    assert a.counts.tolist() == b.counts.tolist() == [2, 0, 1]
    np.testing.assert_array_equal(a.instance_index, b.instance_index)
    np.testing.assert_array_equal(a.pixel_index, b.pixel_index)


def test_visible_counts_over_frames():
    far = np.full((H, W), 5.0, dtype=np.float32)  # a wall at 5 m: no point lies on the sensed surface
    counts = visible_counts(CAM_POINTS, MASKS, [_frame(), _frame(depth=far, index=1)], 0.1)
    assert counts.shape == (3, 2)
    assert counts[:, 0].tolist() == [2, 0, 2] and counts[:, 1].tolist() == [0, 0, 0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="points"):
        project_instances(np.zeros((4, 2)), np.zeros((1, 4), bool), _frame(), 0.1)
    with pytest.raises(ValueError, match="instance masks"):
        project_instances(CAM_POINTS, np.zeros((1, 3), bool), _frame(), 0.1)
    with pytest.raises(ValueError, match="out of range"):
        project_instances(CAM_POINTS, MASKS, _frame(), 0.1).mask(3)


def test_gt_vertices_land_in_rendered_gt_masks():
    """Projected visible GT vertices of a generated scene fall on their own rendered instance (>= 95 %)."""
    from training.data.synthetic import SynthConfig, generate_scene, scene_seed
    from training.teacher.config import TeacherConfig

    mesh, walk, _ = generate_scene(scene_seed(0, 0), "synth0000_00", 40, SynthConfig(cloud_every=10 ** 9))
    shell = [k for k, name in mesh.instance_labels.items() if name in ("wall", "floor", "ceiling")]
    # objects only: wall vertices behind a picture hung 2 mm off the wall pass any depth test
    ids = np.where(np.isin(mesh.instance_ids, shell), 0, mesh.instance_ids)
    hits = total = 0
    for i in range(0, len(walk), 10):
        frame = walk[i]
        proj = project_instances(mesh.vertices, ids, frame, TeacherConfig().depth_threshold)
        vis = proj.visible & (ids > 0)
        total += int(vis.sum())
        hits += int((frame.instance.reshape(-1)[proj.pixel_of_point[vis]] == ids[vis]).sum())
        # the per-instance sparse masks are those same pixels
        m = int(np.argmax(proj.counts))
        assert set(proj.pixels(m)) == set(proj.pixel_of_point[vis & (ids == m + 1)].tolist())
    assert total > 10_000
    assert hits / total >= 0.95, f"only {hits / total:.3f} of {total} visible vertices on their GT instance"
