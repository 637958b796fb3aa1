"""MaskParts: the DBSCAN parts of Mask3D's query masks, kept over atoms, sets of voxels in the same parts.

The split (:mod:`.dbscan`) cuts every query mask into parts; at a low mask threshold a voxel lies in
several masks (the 200k-point bench room: 737k (voxel, part) entries over 92k voxels). Voxels in the same
parts add the same to every sum over a part, so the class-agnostic post-processing (sizes, scores, NMS)
runs over atoms (that room: 17k atoms in 135k (atom, part) pairs) and lists voxels only for the parts it
keeps (:meth:`MaskParts.voxel_masks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from folk_ros.core.voxel_masks import VoxelMasks, expand_segments, stable_sort_indices


@dataclass(frozen=True, eq=False)
class MaskParts:
    """Parts over atoms, all numpy int64.

    voxel (A,): the voxels in some part, grouped by atom; atom_start (T + 1,): atom t is
    ``voxel[atom_start[t]:atom_start[t + 1]]``; entry_atom, entry_part (E,): atom ``entry_atom[e]`` lies in
    part ``entry_part[e]`` (each pair once); part_query (K,): the query mask each part was cut from. Parts
    are numbered by query, then by their lowest voxel (DBSCAN's clusters in order of first occurrence).
    """

    voxel: np.ndarray
    atom_start: np.ndarray
    entry_atom: np.ndarray
    entry_part: np.ndarray
    part_query: np.ndarray

    @property
    def atom_sizes(self) -> np.ndarray:
        """(T,) voxels per atom."""
        return np.diff(self.atom_start)

    def voxel_atom(self) -> np.ndarray:
        """(A,) the atom of each of :attr:`voxel`."""
        return np.repeat(np.arange(len(self.atom_start) - 1), self.atom_sizes)

    @classmethod
    def from_entries(cls, voxel: np.ndarray, query: np.ndarray, part: np.ndarray) -> "MaskParts":
        """From (voxel, query, part) entries, parts numbered 0..K-1 by query then first voxel: each voxel an atom."""
        voxels, atom = np.unique(voxel, return_inverse=True)
        part_query = np.zeros(int(part.max()) + 1 if part.size else 0, np.int64)
        part_query[part] = query
        return cls(voxels.astype(np.int64), np.arange(len(voxels) + 1, dtype=np.int64),
                   atom.reshape(-1).astype(np.int64), np.asarray(part, np.int64), part_query)

    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(voxel, query, part) per voxel of every part, by part."""
        order = np.argsort(self.entry_part, kind="stable")
        atom, part = self.entry_atom[order], self.entry_part[order]
        sizes = self.atom_sizes[atom]
        voxel = self.voxel[expand_segments(self.atom_start[atom], sizes)]
        part = np.repeat(part, sizes)
        return voxel, self.part_query[part], part

    def voxel_masks(self, parts: np.ndarray, voxels: int) -> VoxelMasks:
        """The masks of ``parts`` (M,) int64, in that order, over ``voxels`` voxels."""
        row_of = np.full(len(self.part_query), -1, np.int64)
        row_of[parts] = np.arange(len(parts))
        row = row_of[self.entry_part]
        kept = np.flatnonzero(row >= 0)
        kept = kept[stable_sort_indices(torch.from_numpy(row[kept]), max(len(parts), 1)).numpy()]
        atom, sizes = self.entry_atom[kept], self.atom_sizes[self.entry_atom[kept]]
        cols = self.voxel[expand_segments(self.atom_start[atom], sizes)]
        return VoxelMasks(torch.from_numpy(np.repeat(row[kept], sizes)), torch.from_numpy(cols),
                          (len(parts), int(voxels)))
