"""What changed since the last processed cloud: the region the live map must segment again.

A mapping node publishes its fused map again and again, each time a little larger. Comparing the
occupied voxels of the new cloud with those of the last processed one gives the changed voxels:
voxels that appeared, voxels whose point count changed (a surface seen more fully) and, when the
cloud is a grown version of the last one, voxels that disappeared (an object taken away). The
changed voxels mark ``margin``-sized cells (the *core*); the core grown by one cell is the *crop*
that is segmented, so every object touching the core lies whole inside the crop when it is no
larger than the margin. A cloud that shares little with the last one (a local scan somewhere
else) changes almost everywhere and is segmented whole, like a cloud whose crop holds more than
``full_pass_fraction`` of its points.

Sorted-key set operations only (:mod:`folk_ros.core.map_voxels`), linear in the cloud's points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from folk_ros.core.map_voxels import VoxelGrid, isin_sorted, neighbourhood

GROWN_OVERLAP = 0.5   # a cloud holding this share of the last cloud's voxels is a grown version of it


@dataclass(frozen=True)
class Change:
    """The change of one cloud against the last committed one.

    Attributes:
        kind: "first" (nothing to compare with), "grown" (a grown version of the last cloud),
            "scan" (shares less than GROWN_OVERLAP of the last cloud's voxels) or "unchanged".
        full: the whole cloud is segmented (first cloud, or the crop is most of it).
        crop: (N,) bool, the points to segment.
        core: sorted int64 keys of the ``cell_size`` cells holding changed voxels (all the cloud's
            cells when ``full``): the region the update re-observes.
        cell_size: edge of the core cells (the margin), metres.
        core_points: (N,) bool, the points inside core cells.
        changed_voxels, voxels: changed and occupied voxels of this cloud (at the map voxel size).
        keys, counts: the cloud's sorted unique voxel keys and points per voxel (the state to commit).
    """

    kind: str
    full: bool
    crop: np.ndarray
    core: np.ndarray
    cell_size: float
    core_points: np.ndarray
    changed_voxels: int
    voxels: int
    keys: np.ndarray
    counts: np.ndarray


class ChangeDetector:
    """Compares each cloud with the last committed one (:meth:`detect`, then :meth:`commit`)."""

    def __init__(self, grid: VoxelGrid, margin: float, full_pass_fraction: float = 0.6):
        if not margin >= grid.size:
            raise ValueError(f"margin ({margin} m) must be at least the voxel size ({grid.size} m)")
        self.grid = grid
        self.margin = float(margin)
        self.full_pass_fraction = float(full_pass_fraction)
        self.reset()

    def reset(self) -> None:
        """Forget the last cloud: the next one is segmented whole."""
        self._keys: np.ndarray | None = None
        self._counts: np.ndarray | None = None

    def detect(self, xyz: np.ndarray, keys: np.ndarray, inside: np.ndarray) -> Change:
        """The change of a cloud against the last committed one.

        Args:
            xyz: (N, 3) points in the map frame.
            keys, inside: their voxel keys and in-range mask (``grid.keys(xyz)``); points out of range
                are never segmented.
        """
        uk, counts = np.unique(keys[inside], return_counts=True)
        cells = self.grid.keys(xyz, self.margin)[0]
        if self._keys is None:
            return self._full("first", xyz, cells, inside, uk, counts, changed=uk.size)
        pos = np.minimum(np.searchsorted(self._keys, uk), max(self._keys.size - 1, 0))
        present = self._keys[pos] == uk if self._keys.size else np.zeros(uk.size, bool)
        changed = uk[~present | (self._counts[pos] != counts)]
        kept = int(present.sum())
        kind = "grown" if kept >= GROWN_OVERLAP * max(self._keys.size, 1) else "scan"
        if kind == "grown":   # voxels that disappeared: something was taken away there
            changed = np.concatenate([changed, self._keys[~isin_sorted(self._keys, uk)]])
        if changed.size == 0:
            none = np.zeros(len(xyz), bool)
            return Change("unchanged", False, none, np.zeros(0, np.int64), self.margin, none, 0, uk.size, uk, counts)
        core = np.unique(self.grid.coarse(changed, self.margin))
        crop = isin_sorted(cells, neighbourhood(core, 1)) & inside
        if crop.sum() > self.full_pass_fraction * inside.sum():
            return self._full(kind, xyz, cells, inside, uk, counts, changed=changed.size)
        core_points = isin_sorted(cells, core) & inside
        return Change(kind, False, crop, core, self.margin, core_points, int(changed.size), int(uk.size), uk, counts)

    def commit(self, change: Change) -> None:
        """Make ``change``'s cloud the one the next cloud is compared with."""
        self._keys, self._counts = change.keys, change.counts

    def _full(self, kind, xyz, cells, inside, uk, counts, changed) -> Change:
        core = np.unique(cells[inside])
        return Change(kind, True, inside.copy(), core, self.margin, inside.copy(), int(changed), int(uk.size),
                      uk, counts)
