"""RViz markers of instances: visualization_msgs/MarkerArray from boxes, labels and optional points.

Pure, like :mod:`folk_ros.ros.conversions`: arrays in, a message out, unit-tested without spinning.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from folk_ros.core.geometry import OrientedBoxes
from folk_ros.ros.message_parts import copy_header, point, pose, shallow_copy, yaw_quaternion

# The 12 edges of a box as pairs of corner numbers; corner c has bit 0/1/2 = max in x/y/z.
_BOX_EDGE_ENDS = [0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 1, 3, 4, 6, 5, 7, 0, 4, 1, 5, 2, 6, 3, 7]   # 12 (start, end) pairs


def markers_from_instances(header: Header, names: Sequence[str], scores: np.ndarray, boxes_min: np.ndarray,
                           boxes_max: np.ndarray, colors: np.ndarray, lifetime_s: float,
                           namespace: str = "folk", point_sets: Sequence[np.ndarray] | None = None, *,
                           ids: Sequence[int] | None = None, delete_ids: Sequence[int] | None = None,
                           obb: OrientedBoxes | None = None,
                           box_style: str = "wire", line_width: float = 0.02, text_height: float = 0.15,
                           point_size: float = 0.02, max_marker_points: int = 2000) -> MarkerArray:
    """RViz markers for M instances: DELETEALL, then per instance a box, a label and optionally points.

    Instance i has marker id ``ids[i]`` (default i) in each of the namespaces ``{namespace}/boxes``,
    ``{namespace}/labels`` and ``{namespace}/points`` (RViz shows them as separately toggled groups).
    With ``delete_ids`` None, a leading DELETEALL (RViz 2 clears every marker of the display) removes
    the previous cloud's markers even when fewer instances follow. The live map passes its stable ids
    and ``delete_ids`` (the ids gone since the last array) instead: markers are then replaced in place
    and deleted one by one, so RViz does not flicker.

    Args:
        header: copied into every marker.
        names: M label strings ("" shows as "unlabeled"); the text reads e.g. "chair 0.87".
        scores: (M,) float. boxes_min, boxes_max: (M, 3) axis-aligned box corners.
        colors: (M, 3) uint8 or float [0, 1] colour of each instance's box and points.
        lifetime_s: marker lifetime in seconds (0: until deleted).
        namespace: prefix of the marker namespaces.
        point_sets: optional M arrays of (K_i, 3) points, drawn as a POINTS marker each; every marker
            point is a Python message object, so at most ``max_marker_points`` (evenly strided) are kept.
        obb: the oriented boxes to draw (gravity-aligned yaw); None = the axis-aligned ones.
        box_style: "wire" (LINE_LIST, 12 edges, ``line_width`` metres) or "cube" (CUBE, 35% opaque).
        text_height: text height in metres; the label sits that far above the box top.
        point_size: POINTS marker point width in metres.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    m = len(scores)
    bmin, bmax = np.asarray(boxes_min, np.float64), np.asarray(boxes_max, np.float64)
    rgba = _marker_colors(colors, m)
    if len(names) != m or bmin.shape != (m, 3) or bmax.shape != (m, 3):
        raise ValueError(f"need M names, (M,) scores and (M, 3) boxes; got {len(names)}, {scores.shape}, "
                         f"{bmin.shape}, {bmax.shape}")
    if point_sets is not None and len(point_sets) != m:
        raise ValueError(f"point_sets must hold {m} arrays, got {len(point_sets)}")
    if box_style not in ("wire", "cube"):
        raise ValueError(f"box_style must be 'wire' or 'cube', got {box_style!r}")
    if not lifetime_s >= 0 or not math.isfinite(lifetime_s):
        raise ValueError(f"lifetime_s must be a finite number >= 0, got {lifetime_s}")
    lifetime_sec, lifetime_ns = divmod(int(round(lifetime_s * 1e9)), 1_000_000_000)
    shared_header = copy_header(header)       # one header for the array: serialised, never mutated
    template = Marker(header=shared_header, action=Marker.ADD, frame_locked=False,
                      lifetime=Duration(sec=lifetime_sec, nanosec=lifetime_ns))

    # parts every marker of a kind has alike, made once and shared (the array is serialised, never mutated)
    identity = Pose(orientation=Quaternion(w=1.0))
    line_scale, text_scale = Vector3(x=float(line_width)), Vector3(z=float(text_height))
    point_scale, white = Vector3(x=float(point_size), y=float(point_size)), ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)

    def marker(ns: str, marker_id: int, kind: int, color: ColorRGBA, where: Pose, scale: Vector3) -> Marker:
        # Marker() builds a dozen default sub-messages (~15 us); a shallow copy of the template shares its
        # header, lifetime and empty texture/mesh parts (~1.5 us), and gets its own lists
        mk = shallow_copy(template)
        mk.ns, mk.id, mk.type, mk.color, mk.pose, mk.scale = ns, marker_id, kind, color, where, scale
        mk.points, mk.colors, mk.uv_coordinates = [], [], []
        return mk

    ids = list(range(m)) if ids is None else [int(i) for i in ids]
    if len(ids) != m:
        raise ValueError(f"ids must hold {m} marker ids, got {len(ids)}")
    if delete_ids is None:
        markers = [Marker(header=shared_header, ns=namespace, id=0, action=Marker.DELETEALL)]
    else:
        kinds = ("boxes", "labels") + (("points",) if point_sets is not None else ())
        markers = [Marker(header=shared_header, ns=f"{namespace}/{kind}", id=int(i), action=Marker.DELETE)
                   for i in delete_ids for kind in kinds]
    if obb is None:
        obb = OrientedBoxes((bmin + bmax) / 2.0, bmax - bmin, np.zeros(m))
    if len(obb) != m:
        raise ValueError(f"obb must hold {m} boxes, got {len(obb)}")
    center, size = obb.center, obb.size                                         # (M, 3), (M, 3)
    corners = obb.corners().tolist() if box_style == "wire" else None          # (M, 8, 3)
    label_at = np.c_[center[:, :2], center[:, 2] + size[:, 2] / 2 + text_height].tolist()
    for i, mid in enumerate(ids):
        r, g, b = rgba[i].tolist()
        color = ColorRGBA(r=r, g=g, b=b, a=1.0)
        if box_style == "cube":
            sx, sy, sz = np.maximum(size[i], 1e-3).tolist()
            box = marker(f"{namespace}/boxes", mid, Marker.CUBE, ColorRGBA(r=r, g=g, b=b, a=0.35),
                         pose(point(center[i]), yaw_quaternion(obb.yaw[i])),
                         Vector3(x=sx, y=sy, z=sz))
        else:
            box = marker(f"{namespace}/boxes", mid, Marker.LINE_LIST, color, identity, line_scale)
            # 24 line ends over 8 corner Points: an end appears three times, a Point is made once
            ends = [Point(x=x, y=y, z=z) for x, y, z in corners[i]]
            box.points = [ends[k] for k in _BOX_EDGE_ENDS]
        markers.append(box)

        x, y, z = label_at[i]
        text = marker(f"{namespace}/labels", mid, Marker.TEXT_VIEW_FACING, white,
                      pose(Point(x=x, y=y, z=z), identity.orientation), text_scale)
        text.text = f"{names[i] or 'unlabeled'} {scores[i]:.2f}"
        markers.append(text)

        if point_sets is not None:
            pts = np.asarray(point_sets[i], np.float64).reshape(-1, 3)
            if len(pts) > max_marker_points:
                pts = pts[:: math.ceil(len(pts) / max_marker_points)]
            cloud = marker(f"{namespace}/points", mid, Marker.POINTS, color, identity, point_scale)
            cloud.points = [Point(x=x, y=y, z=z) for x, y, z in pts.tolist()]
            markers.append(cloud)
    return MarkerArray(markers=markers)


def _marker_colors(colors: np.ndarray, m: int) -> np.ndarray:
    """(M, 3) Python-float-ready float64 colours in [0, 1] from uint8 or float input."""
    colors = np.asarray(colors)
    if colors.shape != (m, 3):
        raise ValueError(f"colors must have shape ({m}, 3), got {colors.shape}")
    out = colors / 255.0 if colors.dtype == np.uint8 else colors.astype(np.float64)
    return np.clip(out, 0.0, 1.0)
