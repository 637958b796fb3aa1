"""Mask3D input pipeline: 2 cm voxelisation (first point per voxel), colour normalisation.

As Mask3D's validation pipeline (datasets/semseg.py + VoxelizeCollate): voxel
coordinates ``floor(xyz / voxel_size)`` in float32; one voxel per occupied
cell, ordered by first occurrence, carrying the features and raw xyz of that
first point (``unique_map``); ``inverse_map`` sends every point to its voxel.
Colours: ``(c - 255 * mean) * 1 / (255 * std)`` in float32 on 0..255 values
(albumentations.Normalize).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Voxelization:
    """coords (V, 3) int32 voxel indices in model order; unique_map (V,) int64 first point
    of each voxel; inverse_map (N,) int64 point -> voxel."""

    coords: np.ndarray
    unique_map: np.ndarray
    inverse_map: np.ndarray


def voxelize(xyz: np.ndarray, voxel_size: float = 0.02) -> Voxelization:
    """Quantise (N, 3) metres; voxels ordered by their first point (ME sparse_quantize on CPU)."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] == 0:
        raise ValueError(f"xyz must be (N, 3) with N > 0, got {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise ValueError("xyz contains NaN or inf")
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    grid = np.floor(xyz.astype(np.float32) / np.float32(voxel_size)).astype(np.int64)
    _, first, inverse = np.unique(grid, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")            # sorted cells -> first-occurrence order
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    unique_map = first[order].astype(np.int64)
    return Voxelization(grid[unique_map].astype(np.int32), unique_map,
                        rank[inverse.reshape(-1)].astype(np.int64))


def to_uint8_colors(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) colours as uint8: uint8 kept, floats in [0, 1] scaled by 255 and rounded."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 2 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must be (N, 3), got {rgb.shape}")
    if rgb.dtype == np.uint8:
        return rgb
    if not np.isfinite(rgb).all() or rgb.min() < 0 or rgb.max() > 1:
        raise ValueError("float rgb must be finite and in [0, 1]")
    return np.rint(rgb.astype(np.float64) * 255.0).astype(np.uint8)


def normalize_colors(rgb_uint8: np.ndarray, mean, std) -> np.ndarray:
    """(N, 3) uint8 -> (N, 3) float32 ``(c / 255 - mean) / std`` (albumentations arithmetic)."""
    m = np.asarray(mean, dtype=np.float32) * np.float32(255.0)
    inv = np.reciprocal(np.asarray(std, dtype=np.float32) * np.float32(255.0), dtype=np.float32)
    out = np.asarray(rgb_uint8).astype(np.float32)
    out -= m
    out *= inv
    return out


def voxel_segments(segments: np.ndarray, unique_map: np.ndarray) -> np.ndarray:
    """Per-voxel segment ids renumbered 0..S-1 (``np.unique`` order): (V,) int64."""
    _, inv = np.unique(np.asarray(segments)[unique_map], return_inverse=True)
    return inv.reshape(-1).astype(np.int64)
