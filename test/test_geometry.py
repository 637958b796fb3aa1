"""Gravity-aligned oriented boxes (issue: a table at 30 degrees gets a box at 30 degrees)."""

import numpy as np
import pytest

from folk_ros.core.geometry import grouped_oriented_boxes, oriented_boxes


def box_surface(center, size, yaw, n=3000, seed=0):
    """Points on the surface of a box turned by ``yaw`` about +z."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-0.5, 0.5, (n, 3))
    face = rng.integers(0, 3, n)
    u[np.arange(n), face] = np.sign(u[np.arange(n), face]) * 0.5
    p = u * np.asarray(size)
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1], p[:, 2]], 1) + np.asarray(center)


@pytest.mark.parametrize("yaw_deg, want_deg", [(0, 0), (30, 30), (-60, -60), (90, 90), (120, -60), (-100, 80)])
def test_a_turned_box_gets_its_yaw_size_and_centre(yaw_deg, want_deg):
    pts = box_surface((1.0, 2.0, 0.4), (1.6, 0.8, 0.75), np.radians(yaw_deg))
    boxes = oriented_boxes(pts, [np.arange(3000)])
    center, size, yaw = boxes.center[0], boxes.size[0], boxes.yaw[0]
    np.testing.assert_allclose(np.degrees(yaw), want_deg, atol=1e-3)
    np.testing.assert_allclose(size, (1.6, 0.8, 0.75), atol=1e-5)
    np.testing.assert_allclose(center, (1.0, 2.0, 0.4), atol=1e-5)


def test_the_oriented_box_is_tighter_than_the_axis_aligned_one_and_holds_every_point():
    pts = box_surface((0.0, 0.0, 0.5), (2.0, 1.0, 1.0), np.radians(30))
    boxes = oriented_boxes(pts, [np.arange(len(pts))])
    aabb = np.prod(pts.max(0) - pts.min(0))
    assert np.prod(boxes.size[0]) < 0.6 * aabb
    corners = boxes.corners()[0]                                   # (8, 3): all points inside their hull
    c, s = np.cos(-boxes.yaw[0]), np.sin(-boxes.yaw[0])
    local = pts - boxes.center[0]
    local = np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], 1)
    assert (np.abs(local) <= boxes.size[0] / 2 + 1e-9).all()
    np.testing.assert_allclose(corners.mean(0), boxes.center[0], atol=1e-9)


def test_degenerate_footprints_and_several_instances():
    xyz = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0],                  # one footprint point: a vertical line
                    [0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [2.0, 2.0, 0.0]])  # collinear footprint at 45 degrees
    boxes = oriented_boxes(xyz, [np.array([0, 1]), np.array([2, 3, 4])])
    np.testing.assert_allclose(boxes.size[0], (0.0, 0.0, 1.0))
    np.testing.assert_allclose(np.degrees(boxes.yaw[1]), 45.0, atol=1e-9)
    np.testing.assert_allclose(boxes.size[1, 0], np.sqrt(8), atol=1e-9)
    with pytest.raises(ValueError, match="no points"):
        oriented_boxes(xyz, [np.zeros(0, np.int64)])


def reference_box(pts: np.ndarray) -> tuple[float, float]:
    """(area, yaw mod pi/2) of the least-area footprint rectangle: every hull edge of all the points tried."""
    from scipy.spatial import ConvexHull, QhullError
    try:
        hull = pts[ConvexHull(pts[:, :2]).vertices, :2]
    except QhullError:                        # a flat footprint: a segment, or a point
        return 0.0, 0.0
    best = (np.inf, 0.0)
    for a, b in zip(hull, np.roll(hull, -1, axis=0)):
        yaw = np.arctan2(b[1] - a[1], b[0] - a[0])
        c, s = np.cos(yaw), np.sin(yaw)
        u, v = c * hull[:, 0] + s * hull[:, 1], -s * hull[:, 0] + c * hull[:, 1]
        best = min(best, (np.ptp(u) * np.ptp(v), np.mod(yaw, np.pi / 2)))
    return best


@pytest.mark.parametrize("loop_points", [None, 1, 10 ** 9], ids=["mixed", "one by one", "all together"])
def test_many_instances_match_a_rectangle_search_over_every_hull_edge(monkeypatch, loop_points):
    if loop_points is not None:   # how the points are thinned must not change the boxes
        monkeypatch.setattr("folk_ros.core.geometry.OCTAGON_LOOP_POINTS", loop_points)
    rng = np.random.default_rng(3)
    clouds = []
    for i in range(80):         # boxes, blobs, thin sticks and voxel grids (repeated footprints), big and small
        n = int(rng.integers(3, 4000)) if i % 10 else 20_000    # some above OCTAGON_LOOP_POINTS
        if i % 4 == 0:
            pts = box_surface(rng.uniform(-5, 5, 3), rng.uniform(0.05, 2, 3), rng.uniform(-np.pi, np.pi), n, seed=i)
        elif i % 4 == 1:
            pts = rng.normal(rng.uniform(-5, 5, 3), rng.uniform(0.01, 1, 3), (n, 3))
        elif i % 4 == 2:
            cells = np.stack(np.meshgrid(*(np.arange(k) for k in rng.integers(1, 12, 3)), indexing="ij"), -1)
            pts = (cells.reshape(-1, 3) + 0.5) * 0.05 + rng.uniform(-5, 5, 3)
        else:
            t = rng.uniform(0, 1, n)
            pts = np.outer(t, rng.normal(size=3)) + rng.normal(0, 1e-3, (n, 3))
        clouds.append(pts)
    xyz = np.concatenate(clouds)
    sets = np.split(np.arange(len(xyz)), np.cumsum([len(c) for c in clouds])[:-1])
    boxes = oriented_boxes(xyz, sets)
    for i, pts in enumerate(clouds):
        area, _ = reference_box(pts)
        np.testing.assert_allclose(boxes.size[i, 0] * boxes.size[i, 1], area, rtol=1e-9, atol=1e-12)
        assert boxes.size[i, 0] >= boxes.size[i, 1] and -np.pi / 2 < boxes.yaw[i] <= np.pi / 2
        c, s = np.cos(-boxes.yaw[i]), np.sin(-boxes.yaw[i])     # every point inside its box
        local = pts - boxes.center[i]
        local = np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], 1)
        assert (np.abs(local) <= boxes.size[i] / 2 + 1e-9).all()
    monkeypatch.setattr("folk_ros.core.geometry.RECTANGLE_BLOCK", 1)   # one instance per block: the same boxes
    one_by_one = oriented_boxes(xyz, sets)
    for name in ("center", "size", "yaw"):
        np.testing.assert_array_equal(getattr(one_by_one, name), getattr(boxes, name))


def test_grouped_points_give_the_same_boxes_and_bad_sizes_are_refused():
    rng = np.random.default_rng(5)
    xyz = rng.normal(size=(500, 3))
    sets = [rng.choice(500, k, replace=False) for k in (3, 40, 200)]
    grouped = grouped_oriented_boxes(xyz[np.concatenate(sets)], [3, 40, 200])
    for name in ("center", "size", "yaw"):
        np.testing.assert_array_equal(getattr(grouped, name), getattr(oriented_boxes(xyz, sets), name))
    assert len(grouped_oriented_boxes(np.zeros((0, 3)), [])) == 0
    with pytest.raises(ValueError, match="add up to 4, not to the 5 points"):
        grouped_oriented_boxes(xyz[:5], [1, 3])
    with pytest.raises(ValueError, match="instance 1 has no points"):
        grouped_oriented_boxes(xyz[:5], [5, 0])
