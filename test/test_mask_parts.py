"""folk_ros.core.mask3d.parts: parts over atoms, listed as voxels by hand."""

import numpy as np

from folk_ros.core.mask3d.parts import MaskParts


def test_entries_and_kept_masks_list_each_atoms_voxels():
    # atoms: {7, 2} in parts 0 and 1, {4} in part 1, {9, 3, 5} in part 2; part 2 cut from query 1
    parts = MaskParts(voxel=np.array([7, 2, 4, 9, 3, 5]), atom_start=np.array([0, 2, 3, 6]),
                      entry_atom=np.array([0, 0, 1, 2]), entry_part=np.array([0, 1, 1, 2]),
                      part_query=np.array([0, 0, 1]))
    assert parts.atom_sizes.tolist() == [2, 1, 3] and parts.voxel_atom().tolist() == [0, 0, 1, 2, 2, 2]
    voxel, query, part = parts.entries()
    assert list(zip(voxel.tolist(), query.tolist(), part.tolist())) == [
        (7, 0, 0), (2, 0, 0), (7, 0, 1), (2, 0, 1), (4, 0, 1), (9, 1, 2), (3, 1, 2), (5, 1, 2)]
    masks = parts.voxel_masks(np.array([2, 0]), voxels=10)
    assert masks.shape == (2, 10) and masks.rows.tolist() == [0, 0, 0, 1, 1]
    assert [sorted(masks.cols[masks.rows == r].tolist()) for r in range(2)] == [[3, 5, 9], [2, 7]]


def test_from_entries_makes_each_voxel_an_atom():
    parts = MaskParts.from_entries(np.array([4, 1, 4]), np.array([0, 0, 2]), np.array([0, 0, 1]))
    assert parts.voxel.tolist() == [1, 4] and parts.atom_sizes.tolist() == [1, 1]
    assert parts.entry_atom.tolist() == [1, 0, 1] and parts.part_query.tolist() == [0, 2]
    empty = MaskParts.from_entries(*(np.zeros(0, np.int64),) * 3)
    assert len(empty.part_query) == 0 and empty.entries()[0].size == 0
