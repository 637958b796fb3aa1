"""Voxel keys of the live object map: packed int64 cells around a fixed origin, and set overlaps.

The map keeps every instance as a sorted set of int64 voxel keys in the map frame. A key packs the
integer cell ``floor((xyz - origin) / size)`` of each axis into 21 bits (offset ``2**20``), so keys
are comparable across clouds as long as the origin and size stay fixed; they cover
``+-2**20`` cells around the origin (+-52 km at 5 cm). Ranges are checked in float64 before any
integer cast: points beyond them are reported, never wrapped into the map.

Everything here is vectorised numpy: set sizes, intersections and pairwise overlap counts between
two families of sets are sorts and ``searchsorted``, never a Python loop over points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from folk_ros.core.voxel_masks import expand_segments

BITS = 21
OFFSET = 1 << (BITS - 1)                 # cell c is stored as c + OFFSET in [0, 2**21)
MASK = (1 << BITS) - 1
MAX_CELL = OFFSET - 1                    # |cell| <= MAX_CELL on every axis


@dataclass(frozen=True)
class VoxelGrid:
    """A cubic grid of edge ``size`` metres whose cell 0 starts at ``origin`` (3,) float64 metres."""

    size: float
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        if not (np.isfinite(self.size) and self.size > 0):
            raise ValueError(f"voxel size must be a finite number > 0, got {self.size}")
        if len(self.origin) != 3 or not np.isfinite(self.origin).all():
            raise ValueError(f"grid origin must be 3 finite numbers, got {self.origin}")

    @classmethod
    def around(cls, xyz: np.ndarray, size: float) -> "VoxelGrid":
        """A grid whose origin is the cell corner nearest the points' centre (so a cloud far from 0,
        e.g. in UTM coordinates, still gets the full key range)."""
        centre = np.asarray(xyz, np.float64).mean(axis=0) if len(xyz) else np.zeros(3)
        if not np.isfinite(centre).all():
            raise ValueError("cannot place a map grid: the points have non-finite coordinates")
        return cls(size, tuple(float(c) for c in np.round(centre / size) * size))

    def cells(self, xyz: np.ndarray, size: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Integer cells (N, 3) int64 of ``xyz`` at edge ``size`` (default: this grid's), and a (N,)
        bool mask of the points inside the key range (cells of the others are undefined, 0)."""
        size = self.size if size is None else float(size)
        q = np.floor((np.asarray(xyz, np.float64) - np.asarray(self.origin)) / size)
        inside = (np.abs(q) <= MAX_CELL).all(axis=1)          # checked in float64, before the cast
        q[~inside] = 0.0
        return q.astype(np.int64), inside

    def keys(self, xyz: np.ndarray, size: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(N,) int64 keys of ``xyz`` (see :func:`pack`) and the (N,) in-range mask of :meth:`cells`."""
        cells, inside = self.cells(xyz, size)
        return pack(cells), inside

    def centers(self, keys: np.ndarray) -> np.ndarray:
        """(K, 3) float64 centres of the voxels ``keys`` of this grid."""
        return (unpack(keys) + 0.5) * self.size + np.asarray(self.origin)

    def coarse(self, keys: np.ndarray, cell_size: float) -> np.ndarray:
        """The keys of the ``cell_size`` cells (same origin) holding the centres of voxels ``keys``."""
        return self.keys(self.centers(keys), cell_size)[0]


def pack(cells: np.ndarray) -> np.ndarray:
    """(N, 3) int64 cells with ``|c| <= MAX_CELL`` -> (N,) int64 keys, ordered like the rows (x, y, z)."""
    c = np.asarray(cells, np.int64) + OFFSET
    return (c[:, 0] << (2 * BITS)) | (c[:, 1] << BITS) | c[:, 2]


def unpack(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack`: (N,) int64 keys -> (N, 3) int64 cells."""
    k = np.asarray(keys, np.int64)
    return np.stack([(k >> (2 * BITS)) & MASK, (k >> BITS) & MASK, k & MASK], axis=1) - OFFSET


def neighbourhood(keys: np.ndarray, radius: int = 1) -> np.ndarray:
    """Sorted unique keys of the cells within ``radius`` cells (Chebyshev) of ``keys`` (a dilation)."""
    keys = np.unique(np.asarray(keys, np.int64))
    if keys.size == 0 or radius <= 0:
        return keys
    r = np.arange(-radius, radius + 1)
    offsets = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)   # ((2r+1)^3, 3)
    cells = (unpack(keys)[:, None, :] + offsets[None]).reshape(-1, 3)
    cells = cells[(np.abs(cells) <= MAX_CELL).all(axis=1)]
    return np.unique(pack(cells))


def isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """(N,) bool: ``values[i]`` in ``sorted_set`` (sorted, unique); ``np.isin`` without re-sorting the set."""
    if sorted_set.size == 0:
        return np.zeros(len(values), bool)
    pos = np.searchsorted(sorted_set, values)
    pos[pos == sorted_set.size] = 0
    return sorted_set[pos] == values


def concat_sets(sets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Keys of several sets, concatenated, and the (K,) int64 index of the set each key came from."""
    if not sets:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sizes = np.fromiter((len(s) for s in sets), np.int64, len(sets))
    return np.concatenate(sets).astype(np.int64, copy=False), np.repeat(np.arange(len(sets)), sizes)


def overlap_counts(sets_a: list[np.ndarray], sets_b: list[np.ndarray]) -> np.ndarray:
    """(A, B) int64 ``|a_i & b_j|`` for two families of unique-key sets (sets may overlap each other).

    Sorts family B once and looks up every key of A in it; keys shared by several sets of B are
    expanded into all their (a, b) pairs, so the cost is the keys plus the shared pairs.
    """
    shape = (len(sets_a), len(sets_b))
    keys_a, owner_a = concat_sets(sets_a)
    keys_b, owner_b = concat_sets(sets_b)
    if keys_a.size == 0 or keys_b.size == 0:
        return np.zeros(shape, np.int64)
    order = np.argsort(keys_b, kind="stable")
    keys_b, owner_b = keys_b[order], owner_b[order]
    lo = np.searchsorted(keys_b, keys_a, side="left")
    hi = np.searchsorted(keys_b, keys_a, side="right")
    n = hi - lo
    hit = n > 0
    lo, n, owner_a = lo[hit], n[hit], owner_a[hit]
    pos_b = expand_segments(lo, n)                 # every A key's n matches in B: lo, lo + 1, ..., lo + n - 1
    flat = np.repeat(owner_a, n) * shape[1] + owner_b[pos_b]
    return np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape)
