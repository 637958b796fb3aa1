"""Gravity-aligned oriented bounding boxes of instances (z up): a table at 30 degrees gets a box at 30 degrees.

The yaw comes from the minimum-area rectangle of the instance's footprint (its points projected on the
floor plane): the rectangle of least area around a convex polygon has a side on one of its edges, so
the convex hull's edge directions are the only candidates (rotating calipers). Height comes from the
points' z range. A flat footprint (collinear points) gets its line's direction, a single point yaw 0.

The points are thinned first (Akl-Toussaint: a point strictly inside the octagon of its instance's
extreme points in 8 directions is no hull vertex; large instances one by one, the others together), then
all instances at once: the hulls of what is left found by monotone chains pruned in vectorised passes,
and the rectangles of every candidate edge direction compared in one array operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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
    if m == 0:
        return OrientedBoxes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    sizes = np.array([len(ids) for ids in point_sets])
    if (sizes == 0).any():
        raise ValueError(f"instance {int(np.argmax(sizes == 0))} has no points")
    pts = xyz[np.concatenate([np.asarray(ids, np.int64) for ids in point_sets])]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
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

OCTAGON_LOOP_POINTS = 4096
"""Instances of at least this many points are thinned one by one (a few (8, n) array operations each); the
smaller ones together in (T, 8) passes, which cost a gather per point but no Python step per instance.
Thinning alone, measured on 2 cores (medians of 7): 100 instances with 369k points (bench_node_latency's
200k-point room) 47 ms all together, 14 ms one by one, 10 ms split at 4096; 1000 instances of 200 points
21 ms together, 81 ms one by one, 21 ms split."""


def _inside_extreme_octagon(xy: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(T,) True for points strictly inside the convex octagon spanned by their instance's extreme points
    in 8 directions (so not vertices of its hull; a margin keeps points near an edge). ``xy`` (T, 2)
    grouped by instance, instance i in rows ``starts[i]`` to ``starts[i] + sizes[i]``. Instances whose
    octagon has no area keep every point."""
    large = sizes >= OCTAGON_LOOP_POINTS
    if not large.any():
        return _inside_octagons_together(xy, sizes)
    inside = np.zeros(len(xy), bool)
    xy_t = np.ascontiguousarray(xy.T)                                            # (2, T): contiguous rows
    for start, size in zip(starts[large].tolist(), sizes[large].tolist()):
        p = xy_t[:, start:start + size]                                          # (2, n)
        vertex = p[:, np.argmax(_DIRECTIONS.T @ p, axis=1)].T                    # (8, 2) extreme points, CCW
        normal, limit = _octagon_sides(vertex[None])
        inside[start:start + size] = (normal[0] @ p > limit[0][:, None]).all(axis=0)
    if not large.all():
        small_sizes = sizes[~large]
        rows = np.repeat(starts[~large] - np.cumsum(small_sizes) + small_sizes, small_sizes)
        rows += np.arange(len(rows))                                             # their points, in order
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
    """:func:`_inside_extreme_octagon` of all instances at once (``xy`` (T, 2) grouped by instance)."""
    m = len(sizes)
    owner = np.repeat(np.arange(m), sizes)
    starts = np.cumsum(sizes) - sizes
    proj = xy @ _DIRECTIONS                                                      # (T, 8)
    best = np.maximum.reduceat(proj, starts, axis=0)                             # (M, 8)
    vertex = np.zeros((m, 8, 2))                                                 # extreme points, CCW
    for j in range(8):
        rows = np.flatnonzero(proj[:, j] == best[owner, j])
        first = rows[np.unique(owner[rows], return_index=True)[1]]               # one per instance
        vertex[:, j] = xy[first]
    normal, limit = _octagon_sides(vertex)
    inside = np.ones(len(xy), bool)
    for j in range(8):
        inside &= normal[owner, j, 0] * xy[:, 0] + normal[owner, j, 1] * xy[:, 1] > limit[owner, j]
    return inside


Chains = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _hull_chains(xy: np.ndarray, owner: np.ndarray) -> Chains:
    """The convex hull of each instance's points, all instances at once (Andrew's monotone chains).

    ``xy`` (T, 2) with ``owner`` (T,). The points of an instance sorted by (x, y) form its lower and its
    upper chain. Every pass drops, everywhere at once, each inner point of a chain that does not make a
    strict turn (left on the lower chain, right on the upper) with its neighbours: it lies on or beyond
    the segment between two points of its set, so it is no hull vertex, whatever else is dropped. The
    passes end when both chains turn strictly everywhere: they are then the hull.

    Returns ``((edge vectors (E, 2), their owners (E,)), (vertices (H, 2), their owners (H,)))``; a
    flat footprint gets its segment, a single point no edge.
    """
    order = np.lexsort((xy[:, 1], xy[:, 0], owner))
    xy, owner = xy[order], owner[order]
    fresh = np.ones(len(xy), bool)             # repeated points go: the argument needs distinct ones
    fresh[1:] = (owner[1:] != owner[:-1]) | (xy[1:] != xy[:-1]).any(axis=1)
    xy, owner = xy[fresh], owner[fresh]
    edges, edge_owner, vertices, vertex_owner = [], [], [], []
    for sign in (1.0, -1.0):                     # lower chain: left turns, upper chain: right turns
        idx = np.arange(len(xy))
        while len(idx) > 2:
            a, b, c = xy[idx[:-2]], xy[idx[1:-1]], xy[idx[2:]]
            inner = (owner[idx[:-2]] == owner[idx[1:-1]]) & (owner[idx[2:]] == owner[idx[1:-1]])
            turn = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
            drop = inner & (sign * turn <= 0)
            if not drop.any():
                break
            idx = idx[np.concatenate([[True], ~drop, [True]])]
        same = owner[idx[:-1]] == owner[idx[1:]]
        edges.append((xy[idx[1:]] - xy[idx[:-1]])[same])
        edge_owner.append(owner[idx[:-1]][same])
        vertices.append(xy[idx])
        vertex_owner.append(owner[idx])
    return ((np.concatenate(edges), np.concatenate(edge_owner)),
            (np.concatenate(vertices), np.concatenate(vertex_owner)))


def _padded(values: np.ndarray, owner: np.ndarray, m: int, fill: np.ndarray) -> np.ndarray:
    """(M, L, ...) rows of ``values`` per owner (sorted by owner, in [0, M)), each padded with its own first
    value (an owner with none: ``fill``)."""
    counts = np.bincount(owner, minlength=m)
    starts = np.cumsum(counts) - counts
    out = np.broadcast_to(fill, (m, max(int(counts.max(initial=0)), 1)) + fill.shape).copy()
    first = np.flatnonzero(counts)
    out[first] = values[starts[first]][:, None]
    out[owner, np.arange(len(owner)) - starts[owner]] = values
    return out


RECTANGLE_BLOCK = 1 << 22
"""Most (instance, candidate yaw, hull vertex) triples compared in one array operation (32 MB of float64)."""


def _min_area_rectangles(yaws: np.ndarray, yaw_owner: np.ndarray, xy: np.ndarray, xy_owner: np.ndarray,
                         m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The least-area rectangle of each of ``m`` instances: candidate yaws (hull edge directions folded
    into [0, pi/2); none: 0) and the bounding points (hull vertices), with their owners. Returns yaw (M,)
    and the (M, 2) min / max corners in the frame rotated by yaw, the longer side along the rotated x
    axis and yaw in (-pi/2, pi/2]. Instances go in blocks of at most :data:`RECTANGLE_BLOCK` triples."""
    by_yaw, by_xy = np.argsort(yaw_owner, kind="stable"), np.argsort(xy_owner, kind="stable")
    yaws, yaw_owner, xy, xy_owner = yaws[by_yaw], yaw_owner[by_yaw], xy[by_xy], xy_owner[by_xy]
    a_n = np.maximum(np.bincount(yaw_owner, minlength=m), 1)
    h_n = np.bincount(xy_owner, minlength=m)
    angle, lo, hi = np.zeros(m), np.zeros((m, 2)), np.zeros((m, 2))
    first = 0
    while first < m:
        last, a_max, h_max = first + 1, a_n[first], h_n[first]
        while last < m and (last - first + 1) * max(a_max, a_n[last]) * max(h_max, h_n[last]) <= RECTANGLE_BLOCK:
            a_max, h_max, last = max(a_max, a_n[last]), max(h_max, h_n[last]), last + 1
        ys = slice(*np.searchsorted(yaw_owner, [first, last]))
        xs = slice(*np.searchsorted(xy_owner, [first, last]))
        angle[first:last], lo[first:last], hi[first:last] = _rectangles(
            _padded(yaws[ys], yaw_owner[ys] - first, last - first, np.zeros(())),
            _padded(xy[xs], xy_owner[xs] - first, last - first, np.zeros(2)))
        first = last
    return angle, lo, hi


def _rectangles(yaws: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_min_area_rectangles` of padded blocks: candidate yaws (M, A), points (M, H, 2)."""
    m = len(yaws)
    c, s = np.cos(yaws)[..., None], np.sin(yaws)[..., None]                      # (M, A, 1)
    x, y = xy[:, None, :, 0], xy[:, None, :, 1]                                   # (M, 1, H)
    u, v = c * x + s * y, -s * x + c * y                                          # rotation by -yaw: (M, A, H)
    lo = np.stack([u.min(2), v.min(2)], axis=-1)                                  # (M, A, 2)
    hi = np.stack([u.max(2), v.max(2)], axis=-1)
    extent = hi - lo
    best = np.argmin(extent[..., 0] * extent[..., 1] + 1e-12 * np.abs(yaws), axis=1)   # ties: the smaller yaw
    rows = np.arange(m)
    angle, lo, hi = yaws[rows, best], lo[rows, best], hi[rows, best]
    turn = extent[rows, best, 1] > extent[rows, best, 0]        # make x the longer side: turn by 90 degrees
    angle = np.where(turn, angle + np.pi / 2, angle)
    lo, hi = (np.where(turn[:, None], np.stack([lo[:, 1], -hi[:, 0]], 1), lo),
              np.where(turn[:, None], np.stack([hi[:, 1], -lo[:, 0]], 1), hi))
    # keep yaw in (-pi/2, pi/2]: a box turned by pi is the same box
    flip = (angle > np.pi / 2 + 1e-12) | (angle <= -np.pi / 2 + 1e-12)
    angle = np.where(angle > np.pi / 2 + 1e-12, angle - np.pi, np.where(angle <= -np.pi / 2 + 1e-12,
                                                                        angle + np.pi, angle))
    lo, hi = np.where(flip[:, None], -hi, lo), np.where(flip[:, None], -lo, hi)
    return angle, lo, hi
