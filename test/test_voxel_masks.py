"""VoxelMasks: instance masks over voxels kept as (mask, voxel) entries."""

import numpy as np
import pytest
import torch

from folk_ros.core.voxel_masks import VoxelMasks, expand_segments, radix_order, split_groups, stable_sort_indices


def _dense(seed=0, m=5, v=40):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((m, v), generator=gen) < 0.3


def test_entries_and_dense_agree():
    dense = _dense()
    masks = VoxelMasks.from_dense(dense)
    assert len(masks) == 5 and masks.shape == (5, 40)
    assert torch.equal(masks.dense(), dense)
    shuffled = torch.randperm(masks.rows.numel(), generator=torch.Generator().manual_seed(1))
    again = VoxelMasks.from_entries(masks.rows[shuffled], masks.cols[shuffled], masks.shape)
    assert torch.equal(again.dense(), dense) and bool((again.rows[1:] >= again.rows[:-1]).all())


def test_select_reorders_and_renumbers():
    dense = _dense()
    masks = VoxelMasks.from_dense(dense)
    picked = masks.select(torch.tensor([3, 0]))
    assert picked.shape == (2, 40) and torch.equal(picked.dense(), dense[[3, 0]])
    keep = torch.tensor([True, False, True, False, True])
    assert torch.equal(masks.select(keep).dense(), dense[keep])
    assert masks.select(torch.zeros(5, dtype=torch.bool)).shape == (0, 40)


def test_point_counts_and_points():
    dense = _dense()
    inverse = torch.randint(0, 40, (300,), generator=torch.Generator().manual_seed(2))
    masks = VoxelMasks.from_dense(dense)
    points = dense[:, inverse]
    assert torch.equal(masks.to_points(inverse), points)
    assert torch.equal(masks.point_counts(torch.bincount(inverse, minlength=40)), points.sum(1))
    np.testing.assert_array_equal(masks.to("cpu").dense().numpy(), dense.numpy())


def test_point_ids_are_each_masks_points_in_order():
    dense = _dense(seed=3, m=6, v=40)
    dense[4] = False                                       # a mask with no voxel: no points
    inverse = torch.randint(0, 40, (300,), generator=torch.Generator().manual_seed(4))
    ids = VoxelMasks.from_dense(dense).point_ids(inverse)
    assert len(ids) == 6 and ids[4].size == 0
    for mask, got in zip(dense[:, inverse].numpy(), ids):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, np.flatnonzero(mask))
    assert VoxelMasks.empty(40).point_ids(inverse) == []


def test_point_groups_over_more_voxels_than_one_radix_pass_sorts():
    gen = torch.Generator().manual_seed(6)
    dense = torch.rand((3, 70_001), generator=gen) < 0.02           # voxel ids need two 16-bit passes
    inverse = torch.randint(0, 70_001, (20_000,), generator=gen)
    points, sizes = VoxelMasks.from_dense(dense).point_groups(inverse)
    want = [np.flatnonzero(mask) for mask in dense[:, inverse].numpy()]
    np.testing.assert_array_equal(sizes, [len(w) for w in want])
    for got, w in zip(split_groups(points, sizes), want):
        np.testing.assert_array_equal(got, w)


@pytest.mark.parametrize("bound", [7, 256, 257, 2 ** 16, 2 ** 16 + 1, 2 ** 40])   # one byte, 16 bits, more passes
def test_radix_order_is_numpys_stable_argsort(bound):
    keys = np.random.default_rng(7).integers(0, bound, 5000)
    keys[::3] = keys[1::3][: len(keys[::3])]                         # ties keep their order
    keys[::5] = bound - 1                                            # the largest key
    np.testing.assert_array_equal(radix_order(keys, bound), np.argsort(keys, kind="stable"))
    assert radix_order(np.zeros(0, np.int64), 1).size == 0 and split_groups(np.arange(3), np.zeros(0)) == []


@pytest.mark.parametrize("bound", [7, 2 ** 15, 2 ** 15 + 1, 2 ** 31 + 1])   # sorted as int16, int32, int64
def test_stable_sort_indices_in_a_narrow_type_equal_an_int64_sort(bound):
    keys = torch.randint(0, bound, (3000,), generator=torch.Generator().manual_seed(8))
    keys[::4] = bound - 1                                            # the largest key fits, and ties keep order
    want = torch.sort(keys, stable=True).indices
    assert torch.equal(stable_sort_indices(keys, bound), want)


def test_winners_take_each_voxel_by_priority():
    dense = _dense(seed=5, m=5, v=40)
    priority = torch.tensor([2, 4, 0, 3, 1])
    top = VoxelMasks.from_dense(dense).winners(priority)
    for v in range(40):
        inside = np.flatnonzero(dense[:, v].numpy())
        expected = inside[np.argmax(priority.numpy()[inside])] if inside.size else -1
        assert top[v].item() == expected
    assert (VoxelMasks.empty(7).winners(torch.zeros(0, dtype=torch.int64)) == -1).all()


def test_expand_segments_by_hand():
    assert expand_segments(np.array([5, 0, 9]), np.array([2, 0, 3])).tolist() == [5, 6, 9, 10, 11]
    assert expand_segments(np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []
