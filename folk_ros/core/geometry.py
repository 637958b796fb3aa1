"""Gravity-aligned oriented bounding boxes of instances (z up): a table at 30 degrees gets a box at 30 degrees.

The yaw comes from the minimum-area rectangle of the instance's footprint (its points projected on the
floor plane): the rectangle of least area around a convex polygon has a side on one of its edges, so
the convex hull's edge directions are the only candidates (rotating calipers). Height comes from the
points' z range. One scipy ConvexHull per instance (M instances, not points); degenerate footprints
(fewer than 3 distinct points, or collinear) fall back to their principal direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError


@dataclass(frozen=True)
class OrientedBoxes:
    """M boxes: center (M, 3), size (M, 3) edge lengths along the box's own x, y, z (x the longer side of
    the footprint), yaw (M,) rotation about +z in radians, in (-pi/2, pi/2]."""

    center: np.ndarray
    size: np.ndarray
    yaw: np.ndarray

    def __len__(self) -> int:
        return int(self.yaw.size)

    def shifted(self, offset) -> "OrientedBoxes":
        """The same boxes moved by ``offset`` (3,) metres (e.g. back from a recentred cloud's frame)."""
        return OrientedBoxes(self.center + np.asarray(offset, np.float64), self.size, self.yaw)

    def corners(self) -> np.ndarray:
        """(M, 8, 3) corners; corner k takes the max of x/y/z where bit 0/1/2 of k is set (box frame)."""
        bits = ((np.arange(8)[:, None] >> np.arange(3)) & 1) - 0.5              # (8, 3) in {-0.5, 0.5}
        local = bits[None] * self.size[:, None, :]                               # (M, 8, 3)
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        x, y = local[..., 0], local[..., 1]
        return np.stack([c * x - s * y, s * x + c * y, local[..., 2]], axis=-1) + self.center[:, None, :]


def oriented_boxes(xyz: np.ndarray, point_sets: Sequence[np.ndarray]) -> OrientedBoxes:
    """The gravity-aligned minimum-footprint box of each point set.

    Args:
        xyz: (N, 3) points, z up.
        point_sets: M arrays of indices into ``xyz`` (each non-empty).
    """
    xyz = np.asarray(xyz, np.float64)
    m = len(point_sets)
    center, size, yaw = np.zeros((m, 3)), np.zeros((m, 3)), np.zeros(m)
    for i, ids in enumerate(point_sets):
        pts = xyz[np.asarray(ids, np.int64)]
        if len(pts) == 0:
            raise ValueError(f"instance {i} has no points")
        angle, (lo, hi) = _min_area_rectangle(pts[:, :2])
        c, s = np.cos(angle), np.sin(angle)
        mid = (lo + hi) / 2.0                                                    # in the rotated frame
        center[i, :2] = (c * mid[0] - s * mid[1], s * mid[0] + c * mid[1])
        z0, z1 = pts[:, 2].min(), pts[:, 2].max()
        center[i, 2] = (z0 + z1) / 2.0
        size[i] = (hi[0] - lo[0], hi[1] - lo[1], z1 - z0)
        yaw[i] = angle
    return OrientedBoxes(center, size, yaw)


def _min_area_rectangle(xy: np.ndarray) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """(yaw, (min, max) corners in the frame rotated by yaw) of the least-area rectangle around ``xy``,
    its longer side along the rotated x axis and yaw in (-pi/2, pi/2]."""
    candidates, xy = _edge_angles(xy)          # the rectangle only depends on the hull's vertices
    c, s = np.cos(candidates), np.sin(candidates)
    # points in each candidate frame (rotation by -angle): (A, N, 2)
    rot = np.stack([c[:, None] * xy[None, :, 0] + s[:, None] * xy[None, :, 1],
                    -s[:, None] * xy[None, :, 0] + c[:, None] * xy[None, :, 1]], axis=-1)
    lo, hi = rot.min(axis=1), rot.max(axis=1)
    extent = hi - lo
    best = int(np.argmin(extent[:, 0] * extent[:, 1] + 1e-12 * np.abs(candidates)))   # ties: the smaller angle
    angle, lo_b, hi_b = float(candidates[best]), lo[best], hi[best]
    if extent[best, 1] > extent[best, 0]:        # make x the longer side: turn the frame by 90 degrees
        angle += np.pi / 2
        lo_b, hi_b = np.array([lo_b[1], -hi_b[0]]), np.array([hi_b[1], -lo_b[0]])
    if angle > np.pi / 2 + 1e-12:                # keep yaw in (-pi/2, pi/2]: a box turned by pi is the same box
        angle -= np.pi
        lo_b, hi_b = -hi_b, -lo_b
    elif angle <= -np.pi / 2 + 1e-12:
        angle += np.pi
        lo_b, hi_b = -hi_b, -lo_b
    return angle, (lo_b, hi_b)


def _edge_angles(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate yaws (the footprint's convex hull edge directions, folded into [0, pi/2)) and the points
    that bound the footprint (the hull's vertices, or all distinct points when it is flat)."""
    try:                                         # straight on the points: a sort of them costs more than qhull
        hull = xy[ConvexHull(xy).vertices]
        edges = np.roll(hull, -1, axis=0) - hull
        return np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2)), hull
    except (QhullError, ValueError):   # < 3 points, all equal, collinear: the principal direction below
        pass
    unique = np.unique(np.round(xy, 6), axis=0)
    if len(unique) < 2:
        return np.zeros(1), unique
    d = unique - unique.mean(axis=0)
    direction = np.linalg.svd(d, full_matrices=False)[2][0]
    return np.array([np.mod(np.arctan2(direction[1], direction[0]), np.pi / 2)]), unique
