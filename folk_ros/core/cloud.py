"""PointCloud: the one input type of the core pipeline, validated once at the edge."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from folk_ros.core.voxelize import voxelize

DEFAULT_RGB = (0.5, 0.5, 0.5)   # the colour of a cloud without one (a LiDAR's): mid grey


@dataclass(frozen=True)
class PointCloud:
    """A coloured point cloud in one frame.

    Attributes:
        xyz: (N, 3) float32 metres, all finite.
        rgb: (N, 3) float32 in [0, 1].
        normals: optional (N, 3) float32.

    Construct with :meth:`from_arrays`, which converts and validates; the dataclass
    constructor validates too, so an instance is always consistent.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    normals: np.ndarray | None = None

    def __post_init__(self):
        _check_points("xyz", self.xyz)
        _check_points("rgb", self.rgb, n=len(self.xyz))
        if self.normals is not None:
            _check_points("normals", self.normals, n=len(self.xyz))
        if self.xyz.dtype != np.float32 or self.rgb.dtype != np.float32:
            raise ValueError("PointCloud arrays must be float32; use PointCloud.from_arrays to convert")
        if not np.isfinite(self.xyz).all():
            raise ValueError("PointCloud.xyz has NaN/inf values; drop them first "
                             "(see from_arrays(drop_nonfinite=True))")
        if self.rgb.size and (self.rgb.min() < 0.0 or self.rgb.max() > 1.0):
            raise ValueError(f"PointCloud.rgb must lie in [0, 1], "
                             f"got [{self.rgb.min():.3g}, {self.rgb.max():.3g}]")

    @classmethod
    def from_arrays(cls, xyz, rgb=None, normals=None, *, default_rgb=DEFAULT_RGB,
                    drop_nonfinite: bool = False) -> "PointCloud":
        """Convert arrays to a validated cloud.

        Args:
            xyz: (N, 3) positions, any real dtype.
            rgb: (N, 3) colours, uint8 0..255 or float 0..1; None -> ``default_rgb`` for every point.
            normals: optional (N, 3).
            default_rgb: colour in [0, 1] used when ``rgb`` is None.
            drop_nonfinite: drop points whose xyz has NaN/inf instead of raising.
        """
        xyz = np.asarray(xyz)
        _check_points("xyz", xyz)
        n = len(xyz)
        if rgb is None:
            rgb = np.broadcast_to(np.asarray(default_rgb, np.float32), (n, 3))
        rgb = np.asarray(rgb)
        _check_points("rgb", rgb, n=n)
        rgb = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
        if normals is not None:
            normals = np.asarray(normals)
            _check_points("normals", normals, n=n)
            normals = normals.astype(np.float32)
        xyz = xyz.astype(np.float32)
        if drop_nonfinite:
            keep = np.isfinite(xyz).all(axis=1)
            if not keep.all():
                xyz, rgb = xyz[keep], rgb[keep]
                normals = normals[keep] if normals is not None else None
        return cls(np.ascontiguousarray(xyz), np.ascontiguousarray(rgb),
                   None if normals is None else np.ascontiguousarray(normals))

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    def select(self, index: np.ndarray) -> "PointCloud":
        """The sub-cloud at ``index`` (bool mask (N,) or integer indices)."""
        return PointCloud(self.xyz[index], self.rgb[index],
                          None if self.normals is None else self.normals[index])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(min (3,), max (3,)) of xyz; ValueError for an empty cloud."""
        if len(self) == 0:
            raise ValueError("an empty cloud has no bounds")
        return self.xyz.min(axis=0), self.xyz.max(axis=0)


def voxel_downsample(cloud: PointCloud, voxel_size: float) -> tuple[PointCloud, np.ndarray, np.ndarray]:
    """Keep the first point of every occupied voxel.

    Returns:
        (sub-cloud of V points, keep (V,) int64 indices into ``cloud``,
        inverse (N,) int64 index of each original point's voxel in the sub-cloud).
    """
    if len(cloud) == 0:
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        empty = np.zeros(0, np.int64)
        return cloud, empty, empty
    vox = voxelize(cloud.xyz, voxel_size)  # the same quantisation Mask3D uses
    return cloud.select(vox.unique_map), vox.unique_map, vox.inverse_map


def fit_point_budget(cloud: PointCloud, max_points: int, voxel_size: float, growth: float = 1.25,
                     max_rounds: int = 16) -> tuple[PointCloud, np.ndarray | None, float]:
    """Voxel-downsample ``cloud`` to at most ``max_points`` (0: no limit).

    The voxel edge starts at ``voxel_size`` and grows by at least ``growth`` (more when far off,
    assuming surface-like density, count ~ 1 / voxel^2) until the budget holds.

    Returns:
        (segmented cloud of V points, inverse (K,) int64 index of each input point's voxel in it, or
        None when nothing was dropped, voxel edge used (0.0 when not downsampled)).
    """
    if max_points <= 0 or len(cloud) <= max_points:
        return cloud, None, 0.0
    voxel = float(voxel_size)
    for _ in range(max_rounds):
        sub, _, inverse = voxel_downsample(cloud, voxel)
        if len(sub) <= max_points:
            break
        voxel *= max(growth, math.sqrt(len(sub) / max_points))
    return sub, inverse, voxel


def _check_points(name: str, arr: np.ndarray, n: int | None = None) -> None:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows but xyz has {n}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
