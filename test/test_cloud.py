"""PointCloud validation and voxel downsampling."""

import numpy as np
import pytest

from folk_ros.core.cloud import PointCloud, voxel_downsample


def test_from_arrays_converts_uint8_and_default_colour():
    xyz = np.array([[0, 0, 0], [1, 2, 3]], np.float64)
    c = PointCloud.from_arrays(xyz, np.array([[0, 128, 255], [255, 0, 0]], np.uint8))
    assert c.xyz.dtype == np.float32 and c.rgb.dtype == np.float32
    np.testing.assert_allclose(c.rgb[0], [0, 128 / 255, 1])
    d = PointCloud.from_arrays(xyz, default_rgb=(0.2, 0.3, 0.4))
    np.testing.assert_allclose(d.rgb, [[0.2, 0.3, 0.4]] * 2, rtol=1e-6)


@pytest.mark.parametrize("xyz, rgb, match", [
    (np.zeros((4, 2)), None, r"shape \(N, 3\)"),
    (np.zeros((4, 3)), np.zeros((3, 3)), "3 rows but xyz has 4"),
    (np.zeros((2, 3)), np.full((2, 3), 2.0), r"\[0, 1\]"),
    (np.array([[0, 0, np.nan]]), None, "NaN/inf"),
    (np.array([["a", "b", "c"]]), None, "numeric"),
])
def test_bad_input_is_a_clear_error(xyz, rgb, match):
    with pytest.raises(ValueError, match=match):
        PointCloud.from_arrays(xyz, rgb)


def test_drop_nonfinite():
    xyz = np.array([[0, 0, 0], [np.inf, 0, 0], [1, 1, 1]], np.float32)
    c = PointCloud.from_arrays(xyz, np.eye(3, dtype=np.float32), drop_nonfinite=True)
    assert len(c) == 2
    np.testing.assert_array_equal(c.rgb, [[1, 0, 0], [0, 0, 1]])


def test_voxel_downsample_keeps_first_point_in_input_order():
    xyz = np.array([[0.51, 0, 0], [0.01, 0, 0], [0.52, 0, 0], [0.02, 0, 0], [2.0, 0, 0]], np.float32)
    sub, keep, inverse = voxel_downsample(PointCloud.from_arrays(xyz), 0.1)
    np.testing.assert_array_equal(keep, [0, 1, 4])
    np.testing.assert_array_equal(inverse, [0, 1, 0, 1, 2])
    np.testing.assert_array_equal(sub.xyz, xyz[keep])
    with pytest.raises(ValueError):
        voxel_downsample(sub, 0.0)
