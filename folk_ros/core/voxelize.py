"""First-point-per-voxel quantisation of a point cloud.

Voxel coordinates are ``floor(xyz / voxel_size)`` computed in float32 (as Mask3D /
MinkowskiEngine's ``sparse_quantize``); one voxel per occupied cell, ordered by the
first point that falls in it (``unique_map``); ``inverse_map`` sends every point to
its voxel. Mask3D's input pipeline and the node's ``max_points`` downsampling both
use it, so they quantise identically. The distinct cells are found by a sort in torch
(:func:`key_ids`), on the calling thread's torch threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class Voxelization:
    """coords (V, 3) int32 voxel indices in model order; unique_map (V,) int64 first point
    of each voxel; inverse_map (N,) int64 point -> voxel."""

    coords: np.ndarray
    unique_map: np.ndarray
    inverse_map: np.ndarray


def cell_keys(grid: np.ndarray) -> np.ndarray:
    """(N, 3) int64 cells -> (N,) keys, equal iff the rows are equal and ordered as the rows
    lexicographically: ``((x - x0) * Ry + (y - y0)) * Rz + (z - z0)`` with per-axis ranges R.

    Falls back to a structured (void) view of the rows when the ranges do not fit in 63 bits. Works on
    the (3, N) transpose: numpy reduces and combines contiguous rows ten times faster than (N, 3) columns.
    """
    axes = np.ascontiguousarray(np.asarray(grid).T)
    lo = axes.min(1)
    span = axes.max(1) - lo + 1
    if float(span[0]) * float(span[1]) * float(span[2]) < 2.0 ** 62:
        return ((axes[0] - lo[0]) * span[1] + (axes[1] - lo[1])) * span[2] + (axes[2] - lo[2])
    rows = np.ascontiguousarray(grid)
    return rows.view(np.dtype((np.void, rows.dtype.itemsize * 3))).reshape(-1)


def key_ids(keys: np.ndarray) -> np.ndarray:
    """(N,) int64 index of each key among the sorted distinct ``keys`` (numpy's ``unique(return_inverse=True)``).

    Integer keys are sorted by torch, on the calling thread's torch threads (100k voxel keys on 2 cores:
    2.4-2.5 ms against numpy's unique, 4.2-7.8 ms); other keys, e.g. the row views :func:`cell_keys` falls
    back to, by numpy.
    """
    if not np.issubdtype(keys.dtype, np.integer):
        return np.unique(keys, return_inverse=True)[1].reshape(-1).astype(np.int64)
    return torch.unique(torch.from_numpy(np.ascontiguousarray(keys, np.int64)), return_inverse=True)[1].numpy()


def first_occurrence(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (N,) ``keys`` numbered 0..K-1 in order of first occurrence: each key's number (N,) and
    the position of each number's first key (K,), both int64 (sorted by :func:`key_ids`)."""
    return renumber_by_first_occurrence(key_ids(keys))


def renumber_by_first_occurrence(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`first_occurrence` of ids that are already numbers 0..K-1, each used (no sort of the N ids)."""
    inverse = torch.from_numpy(np.ascontiguousarray(ids, np.int64))
    k = int(inverse.max()) + 1 if inverse.numel() else 0
    first = torch.full((k,), inverse.numel(), dtype=torch.int64).scatter_reduce_(
        0, inverse, torch.arange(inverse.numel()), reduce="amin")
    order = torch.argsort(first)                          # first positions are distinct: no ties
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return rank[inverse].numpy(), first[order].numpy()


def voxelize(xyz: np.ndarray, voxel_size: float = 0.02) -> Voxelization:
    """Quantise (N, 3) metres; voxels ordered by their first point (ME sparse_quantize on CPU)."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] == 0:
        raise ValueError(f"xyz must be (N, 3) with N > 0, got {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError("xyz contains NaN or inf")
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    grid = np.floor(xyz.astype(np.float32) / np.float32(voxel_size))
    span = float(np.abs(grid).max())
    if span > np.iinfo(np.int32).max:    # checked before the integer casts: never wrap a far point into the room
        raise ValueError(f"coordinates reach {span * voxel_size:.3g} m, {span:.3g} voxels of {voxel_size} m: beyond "
                         f"the int32 voxel range; recentre the cloud first (the node does) or drop the outliers")
    grid = grid.astype(np.int64)
    inverse, unique_map = first_occurrence(cell_keys(grid))
    return Voxelization(grid[unique_map].astype(np.int32), unique_map, inverse)
