"""Mask3D input pipeline: 2 cm voxelisation (first point per voxel), colour normalisation.

As Mask3D's validation pipeline (datasets/semseg.py + VoxelizeCollate): voxel
coordinates ``floor(xyz / voxel_size)`` in float32; one voxel per occupied
cell, ordered by first occurrence, carrying the features and raw xyz of that
first point (``unique_map``); ``inverse_map`` sends every point to its voxel.
Colours: ``(c - 255 * mean) * 1 / (255 * std)`` in float32 on 0..255 values
(albumentations.Normalize). A geometry-only model (``input_features="xyz"``) reads a constant 1
per channel instead: its sparse convolutions see only which cells are occupied.
"""

from __future__ import annotations

import numpy as np

from folk_ros.core.voxelize import Voxelization, voxelize  # noqa: F401  (the model's quantisation)


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


def point_inputs(rgb_uint8: np.ndarray, cfg) -> np.ndarray:
    """(N, 3) float32 input features of a :class:`Mask3DConfig`: normalised colours (``"xyzrgb"``) or ones
    (``"xyz"``: the colours are not read, so a colourless cloud's default colour changes nothing)."""
    if cfg.input_features == "xyz":
        return np.ones((len(rgb_uint8), 3), np.float32)
    return normalize_colors(rgb_uint8, cfg.color_mean, cfg.color_std)


def voxel_segments(segments: np.ndarray, unique_map: np.ndarray) -> np.ndarray:
    """Per-voxel segment ids renumbered 0..S-1 (``np.unique`` order): (V,) int64."""
    _, inv = np.unique(np.asarray(segments)[unique_map], return_inverse=True)
    return inv.reshape(-1).astype(np.int64)
