"""First-point-per-voxel quantisation: packed cell keys (and their row-view fallback), key ids and
first-occurrence numbering, the int32 range check."""

import numpy as np
import pytest

from folk_ros.core.voxelize import cell_keys, first_occurrence, renumber_by_first_occurrence, voxelize


def test_voxelize_packed_keys_equal_row_unique():
    """1-D packed keys (and the void fallback for huge ranges) give np.unique(axis=0)'s voxels; coordinates
    beyond the int32 voxel range are refused before the cast (they used to wrap silently)."""
    rs = np.random.RandomState(0)
    with pytest.raises(ValueError, match="beyond the int32 voxel range"):
        voxelize(rs.randn(500, 3) * 1e14, 0.05)
    for xyz in (rs.rand(3000, 3).astype(np.float32) * 2 - 1, rs.randn(500, 3) * 1e7):
        v = voxelize(xyz, 0.05)
        grid = np.floor(xyz.astype(np.float32) / np.float32(0.05)).astype(np.int64)
        _, first, inv = np.unique(grid, axis=0, return_index=True, return_inverse=True)
        assert np.array_equal(np.sort(v.unique_map), np.sort(first))
        assert np.all(np.diff(v.unique_map) > 0)                       # first-occurrence order
        assert np.array_equal(v.coords[v.inverse_map], grid.astype(np.int32))
        assert np.array_equal(v.unique_map[v.inverse_map], first[inv.reshape(-1)])
    assert cell_keys((rs.randn(10, 3) * 1e17).astype(np.int64)).dtype.kind == "V"


def test_first_occurrence_numbers_keys_in_order_of_appearance():
    labels, first = first_occurrence(np.array([7, 3, 7, -2, 3, 9], np.int64))
    assert labels.tolist() == [0, 1, 0, 2, 1, 3] and first.tolist() == [0, 1, 3, 5]
    rows = np.array([[2 ** 40, 0, 0], [0, 0, 0], [2 ** 40, 0, 0], [0, 2 ** 41, 2 ** 41]], np.int64)
    keys = cell_keys(rows)                     # the void fallback goes through numpy: the same numbering
    assert keys.dtype.kind == "V"
    labels, first = first_occurrence(keys)
    assert labels.tolist() == [0, 1, 0, 2] and first.tolist() == [0, 1, 3]
    empty = first_occurrence(np.zeros(0, np.int64))
    assert empty[0].shape == empty[1].shape == (0,)
    ids = np.array([2, 0, 2, 1, 0, 3])        # already 0..K-1: renumbered without sorting, the same answer
    assert all(np.array_equal(a, b) for a, b in zip(renumber_by_first_occurrence(ids), first_occurrence(ids * 5)))
    assert renumber_by_first_occurrence(ids)[0].tolist() == [0, 1, 0, 2, 1, 3]
