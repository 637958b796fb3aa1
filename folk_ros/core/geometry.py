"""Gravity-aligned oriented bounding boxes of instances (z up): a table at 30 degrees gets a box at 30 degrees.

The yaw comes from the minimum-area rectangle of the instance's footprint (its points projected on the
floor plane): the rectangle of least area around a convex polygon has a side on one of its edges, so
the convex hull's edge directions are the only candidates (rotating calipers). Height comes from the
points' z range. A flat footprint (collinear points) gets its line's direction, a single point yaw 0.

The points are thinned first (Akl-Toussaint: a point strictly inside the octagon of its instance's
extreme points in 8 directions is no hull vertex; large instances one by one, the others together), then
all instances at once: the hulls of what is left found by monotone chains pruned in vectorised passes, and
every candidate edge direction of an instance tried against each of its hull vertices in one array
operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from folk_ros.core.voxel_masks import expand_segments, radix_order


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
    sizes = np.array([len(ids) for ids in point_sets], np.int64)
    if (sizes == 0).any():
        raise ValueError(f"instance {int(np.argmax(sizes == 0))} has no points")
    ids = np.concatenate([np.asarray(ids, np.int64) for ids in point_sets]) if len(sizes) else np.zeros(0, np.int64)
    return grouped_oriented_boxes(np.asarray(xyz)[ids], sizes)


def grouped_oriented_boxes(points: np.ndarray, sizes: np.ndarray) -> OrientedBoxes:
    """:func:`oriented_boxes` of M point groups stored one after the other: ``points`` (T, 3), group i in the
    ``sizes[i]`` rows after the first ``sizes[:i].sum()``; every size > 0 and T = ``sizes.sum()``."""
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    sizes = np.asarray(sizes, np.int64).reshape(-1)
    m = len(sizes)
    if (sizes <= 0).any():
        raise ValueError(f"instance {int(np.argmax(sizes <= 0))} has no points")
    if sizes.sum() != len(pts):
        raise ValueError(f"the {m} group sizes add up to {int(sizes.sum())}, not to the {len(pts)} points")
    if m == 0:
        return OrientedBoxes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    starts = np.cumsum(sizes) - sizes
    owner = np.repeat(np.arange(m), sizes)
    keep = ~_inside_extreme_octagon(pts[:, :2], starts, sizes)
    edges, vertices = _hull_chains(pts[keep, :2], owner[keep])
    angle, lo, hi = _min_area_rectangles(np.mod(np.arctan2(edges[0][:, 1], edges[0][:, 0]), np.pi / 2), edges[1],
                                         vertices[0], vertices[1], m)
    c, s = np.cos(angle), np.sin(angle)
    mid = (lo + hi) / 2.0                                                        # in the rotated frames
    z0, z1 = np.minimum.reduceat(pts[:, 2], starts), np.maximum.reduceat(pts[:, 2], starts)
    center = np.stack([c * mid[:, 0] - s * mid[:, 1], s * mid[:, 0] + c * mid[:, 1], (z0 + z1) / 2.0], axis=1)
    size = np.concatenate([hi - lo, (z1 - z0)[:, None]], axis=1)
    return OrientedBoxes(center, size, angle)


_DIRECTIONS = np.stack([np.cos(np.arange(8) * (np.pi / 4)), np.sin(np.arange(8) * (np.pi / 4))])   # (2, 8)

OCTAGON_LOOP_POINTS = 1024
"""Instances of at least this many points are thinned one by one (a few (8, n) array operations each); the
smaller ones together in (T, 8) passes, which cost more per point but no Python step per instance.
The octagon stage alone, measured on 2 cores (median of 7 minima): bench_node_latency's 100k-point room
(100 instances, 65k points) 5.6 ms all together, 5.3 ms one by one, 3.0 ms split at 4096, 2.3 ms at 1024;
its 200k-point room (100 instances, 369k points) 48.5, 10.5, 8.6, 7.8 ms; 1000 instances of 200 points
21 ms together, 45 ms one by one, 21 ms split."""


def _inside_extreme_octagon(xy: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(T,) True for points strictly inside the convex octagon spanned by their instance's extreme points
    in 8 directions (so not vertices of its hull; a margin keeps points near an edge).
    ``xy`` (T, 2) grouped by instance, instance i in rows ``starts[i]`` to ``starts[i] + sizes[i]``.
    Instances whose octagon has no area keep every point."""
    large = sizes >= OCTAGON_LOOP_POINTS
    if not large.any():
        return _inside_octagons_together(xy, sizes)
    inside = np.zeros(len(xy), bool)
    xy_t = np.ascontiguousarray(xy.T)                                            # (2, T): contiguous rows
    spans = [(start, start + size) for start, size in zip(starts[large].tolist(), sizes[large].tolist())]
    vertex = np.stack([xy_t[:, a:b][:, np.argmax(_DIRECTIONS.T @ xy_t[:, a:b], axis=1)].T   # (L, 8, 2) extreme
                       for a, b in spans])                                                  # points, CCW
    normal, limit = _octagon_sides(vertex)                                       # all large octagons at once
    for (a, b), normal_i, limit_i in zip(spans, normal, limit[:, :, None]):
        inside[a:b] = (normal_i @ xy_t[:, a:b] > limit_i).all(axis=0)
    if not large.all():
        small_sizes = sizes[~large]
        rows = expand_segments(starts[~large], small_sizes)                      # their points, in order
        inside[rows] = _inside_octagons_together(xy[rows], small_sizes)
    return inside


def _octagon_sides(vertex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-planes of M octagons (M, 8, 2) with CCW vertices: ``normal`` (M, 8, 2) and ``limit`` (M, 8), a
    point p strictly inside when ``normal[j] . p > limit[j]`` for every side j (e x p > e x v + margin
    along edge e from vertex v; a repeated vertex, no edge, passes every point; an octagon with no area
    passes none)."""
    nxt = np.roll(vertex, -1, axis=1)
    edge = nxt - vertex                                                          # (M, 8, 2)
    length = np.hypot(edge[..., 0], edge[..., 1])
    scale = np.ptp(vertex.reshape(len(vertex), -1), axis=1)[:, None]
    area = 0.5 * (vertex[..., 0] * nxt[..., 1] - nxt[..., 0] * vertex[..., 1]).sum(1)         # shoelace
    a = edge[..., 0] * vertex[..., 1] - edge[..., 1] * vertex[..., 0]
    limit = np.where(length > 0, a + 1e-9 * (1.0 + scale) * length, -np.inf)
    limit[~(area > 1e-12 * (1.0 + scale[:, 0]) ** 2)] = np.inf
    return np.stack([-edge[..., 1], edge[..., 0]], axis=-1), limit


def _inside_octagons_together(xy: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """:func:`_inside_extreme_octagon` of all instances at once (``xy`` (T, 2) grouped by instance, every
    size > 0): per-instance values reach the points by ``np.repeat``, never by a gather."""
    if len(xy) == 0:
        return np.zeros(0, bool)
    starts = np.cumsum(sizes) - sizes
    proj = xy @ _DIRECTIONS                                                      # (T, 8)
    best = np.maximum.reduceat(proj, starts, axis=0)                             # (M, 8)
    row = np.where(proj == np.repeat(best, sizes, axis=0), np.arange(len(xy))[:, None], len(xy))
    normal, limit = _octagon_sides(xy[np.minimum.reduceat(row, starts, axis=0)])  # first extreme point, CCW
    x, y = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
    inside = np.ones(len(xy), bool)
    for j in range(8):
        inside &= (np.repeat(normal[:, j, 0], sizes) * x + np.repeat(normal[:, j, 1], sizes) * y
                   > np.repeat(limit[:, j], sizes))
    return inside


Chains = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _hull_chains(xy: np.ndarray, owner: np.ndarray) -> Chains:
    """The convex hull of each instance's points, all instances at once (Andrew's monotone chains).

    ``xy`` (T, 2) with ``owner`` (T,). The points of an instance sorted by (x, y) form its lower and its
    upper chain; the upper chain is the lower chain of the points mirrored in y, so one loop prunes both.
    Every pass drops, everywhere at once, each inner point of a chain that does not make a strict left
    turn with its neighbours: it lies on or beyond the segment between two points of its set, so it is no
    hull vertex, whatever else is dropped. The passes end when every chain turns strictly everywhere: they
    are then the hull.

    Returns ``((edge vectors (E, 2), their owners (E,)), (vertices (H, 2), their owners (H,)))``, the lower
    chains' before the upper chains'; a flat footprint gets its segment, a single point no edge.
    """
    key = np.empty(len(xy), np.complex128)     # numpy orders complex numbers by real, then imaginary part
    key.real, key.imag = xy[:, 0], xy[:, 1]
    order = np.argsort(key)                                     # by x then y, then stably by owner: 2x lexsort
    order = order[radix_order(owner[order], int(owner.max(initial=0)) + 1)]
    key, owner = key[order], owner[order]
    fresh = np.ones(len(key), bool)             # repeated points go: the argument needs distinct ones
    fresh[1:] = (owner[1:] != owner[:-1]) | (key[1:] != key[:-1])
    key, owner = key[fresh], owner[fresh]
    mirrored = int(owner.max(initial=-1)) + 1                  # the mirrored copies' owners start here
    x, y = np.concatenate([key.real, key.real]), np.concatenate([key.imag, -key.imag])   # the chains' points
    who = np.concatenate([owner, owner + mirrored])
    while len(x) > 2:                          # x, y apart: contiguous, and three 1-d compactions a pass
        dx, dy = x[1:] - x[:-1], y[1:] - y[:-1]   # a -> b and b -> c of every inner point b
        turn = dx[:-1] * dy[1:] - dy[:-1] * dx[1:]
        drop = (who[:-2] == who[1:-1]) & (who[2:] == who[1:-1]) & (turn <= 0)
        if not drop.any():
            break
        keep = np.concatenate([[True], ~drop, [True]])
        x, y, who = x[keep], y[keep], who[keep]
    upper = who >= mirrored                    # the upper chains back in place
    y, owner = np.where(upper, -y, y), np.where(upper, who - mirrored, who)
    same = who[:-1] == who[1:]
    edges = np.stack([(x[1:] - x[:-1])[same], (y[1:] - y[:-1])[same]], axis=1)
    return (edges, owner[:-1][same]), (np.stack([x, y], axis=1), owner)


RECTANGLE_BLOCK = 1 << 22
"""Most (candidate yaw, hull vertex) pairs compared in one array operation (32 MB of float64); an instance
with more goes alone."""


def _min_area_rectangles(yaws: np.ndarray, yaw_owner: np.ndarray, xy: np.ndarray, xy_owner: np.ndarray,
                         m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The least-area rectangle of each of ``m`` instances: candidate yaws (hull edge directions folded
    into [0, pi/2); none: 0) and the bounding points (hull vertices, at least one per instance), with their
    owners. Returns yaw (M,) and the (M, 2) min / max corners in the frame rotated by yaw, the longer side
    along the rotated x axis and yaw in (-pi/2, pi/2]. Each instance's candidate yaws meet each of its
    points once (no padding to the largest hull); instances go in blocks of at most
    :data:`RECTANGLE_BLOCK` pairs."""
    alone = np.flatnonzero(np.bincount(yaw_owner, minlength=m) == 0)            # no edge: yaw 0
    yaws, yaw_owner = np.concatenate([yaws, np.zeros(len(alone))]), np.concatenate([yaw_owner, alone])
    by_yaw, by_xy = np.argsort(yaw_owner, kind="stable"), np.argsort(xy_owner, kind="stable")
    yaws, yaw_owner, xy, xy_owner = yaws[by_yaw], yaw_owner[by_yaw], xy[by_xy], xy_owner[by_xy]
    pairs = np.bincount(yaw_owner, minlength=m) * np.bincount(xy_owner, minlength=m)
    block = (np.cumsum(pairs) - pairs) // RECTANGLE_BLOCK                        # instances of a block: adjacent
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(block)) + 1, [m]])
    angle, lo, hi = np.zeros(m), np.zeros((m, 2)), np.zeros((m, 2))
    for first, last in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        ys = slice(*np.searchsorted(yaw_owner, [first, last]))
        xs = slice(*np.searchsorted(xy_owner, [first, last]))
        angle[first:last], lo[first:last], hi[first:last] = _rectangles(
            yaws[ys], yaw_owner[ys] - first, xy[xs], xy_owner[xs] - first, last - first)
    return angle, lo, hi


def _rectangles(yaws: np.ndarray, yaw_owner: np.ndarray, xy: np.ndarray, xy_owner: np.ndarray,
                m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_min_area_rectangles` of one block, yaws and points sorted by owner, every owner with both."""
    per_owner = np.bincount(xy_owner, minlength=m)
    per_yaw = per_owner[yaw_owner]                                               # the pairs of each yaw
    pair_start = np.cumsum(per_yaw) - per_yaw
    point = expand_segments(np.cumsum(per_owner)[yaw_owner] - per_owner[yaw_owner], per_yaw)   # owner's points
    c, s = np.repeat(np.cos(yaws), per_yaw), np.repeat(np.sin(yaws), per_yaw)
    x, y = xy[point, 0], xy[point, 1]
    u, v = c * x + s * y, -s * x + c * y                                          # rotation by -yaw
    lo = np.stack([np.minimum.reduceat(u, pair_start), np.minimum.reduceat(v, pair_start)], axis=-1)   # (A, 2)
    hi = np.stack([np.maximum.reduceat(u, pair_start), np.maximum.reduceat(v, pair_start)], axis=-1)
    extent = hi - lo
    area = extent[:, 0] * extent[:, 1] + 1e-12 * np.abs(yaws)                    # ties: the smaller yaw
    yaw_start = np.searchsorted(yaw_owner, np.arange(m))
    least = np.minimum.reduceat(area, yaw_start)
    best = np.minimum.reduceat(np.where(area == least[yaw_owner], np.arange(len(area)), len(area)), yaw_start)
    angle, lo, hi, extent = yaws[best], lo[best], hi[best], extent[best]
    turn = extent[:, 1] > extent[:, 0]                          # make x the longer side: turn by 90 degrees
    angle = np.where(turn, angle + np.pi / 2, angle)
    lo, hi = (np.where(turn[:, None], np.stack([lo[:, 1], -hi[:, 0]], 1), lo),
              np.where(turn[:, None], np.stack([hi[:, 1], -lo[:, 0]], 1), hi))
    # keep yaw in (-pi/2, pi/2]: a box turned by pi is the same box
    flip = (angle > np.pi / 2 + 1e-12) | (angle <= -np.pi / 2 + 1e-12)
    angle = np.where(angle > np.pi / 2 + 1e-12, angle - np.pi, np.where(angle <= -np.pi / 2 + 1e-12,
                                                                        angle + np.pi, angle))
    lo, hi = np.where(flip[:, None], -hi, lo), np.where(flip[:, None], -lo, hi)
    return angle, lo, hi
