"""Pure conversions between ROS 2 messages and the numpy/core types of folk_ros.

No Node here: every function takes messages or arrays and returns messages or arrays, so
the node's callbacks only convert and enqueue, and all of this is unit-tested without
spinning anything (DESIGN.md, "Callbacks convert and enqueue").

- ``cloud_from_msg``: sensor_msgs/PointCloud2 -> :class:`~folk_ros.core.cloud.PointCloud` (+ indices of the kept
  points in the message's row-major point order), through a zero-copy structured-dtype view.
- ``cloud_to_msg``: x, y, z, packed rgb and extra scalar fields -> PointCloud2 (``labeled_cloud``).
- ``instances_to_msg``: instance arrays -> folk_ros_interfaces/InstanceArray.
- ``label_colors``: the colour of each label (markers, ``labeled_cloud``).

RViz markers are made in :mod:`folk_ros.ros.markers`; the message parts both build in
:mod:`folk_ros.ros.message_parts`.
"""

from __future__ import annotations

import array
from typing import Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from folk_ros_interfaces.msg import Instance, InstanceArray
from geometry_msgs.msg import Vector3
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from folk_ros.core.cloud import DEFAULT_RGB
from folk_ros.core.pointcloud2 import MAX_RANGE_M, NUMPY_CODE, CloudConversion, decode_pointcloud2
from folk_ros.core.geometry import OrientedBoxes
from folk_ros.ros.message_parts import copy_header, copy_time, point, pose, shallow_copy, yaw_quaternion

_DATATYPE_OF_NUMPY = {np.dtype(code).newbyteorder("<"): dt for dt, code in NUMPY_CODE.items()}

assert array.array("I").itemsize == 4, "uint32[] message fields need a 4-byte array type code"

# tab20 (matplotlib), dark shades first then light ones, so consecutive labels contrast.
_TAB20 = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], np.uint8)
UNLABELED_COLOR = (90, 90, 90)  # colour of label index -1 (no label / no instance)
_PALETTE = np.vstack([_TAB20, np.array(UNLABELED_COLOR, np.uint8)])     # row 20: unlabeled
_PACKED_PALETTE = (_PALETTE[:, 0].astype(np.uint32) << 16) | (_PALETTE[:, 1].astype(np.uint32) << 8) | _PALETTE[:, 2]


def cloud_from_msg(msg: PointCloud2, default_rgb=DEFAULT_RGB, origin=None,
                   max_range: float = MAX_RANGE_M) -> CloudConversion:
    """Read a sensor_msgs/PointCloud2 into a :class:`~folk_ros.core.cloud.PointCloud`
    (:func:`folk_ros.core.pointcloud2.decode_pointcloud2`, which documents the layouts it reads, the
    recentring on ``origin`` and the ``max_range`` outliers)."""
    return decode_pointcloud2(msg.fields, msg.data, msg.height, msg.width, msg.point_step, msg.row_step,
                              bool(msg.is_bigendian), default_rgb, origin, max_range)


# ---------------------------------------------------------------------------------------------
# arrays -> PointCloud2


def cloud_to_msg(xyz: np.ndarray, rgb: np.ndarray | None, header: Header,
                 extra_fields: Mapping[str, np.ndarray] | None = None) -> PointCloud2:
    """An unorganised (height 1) little-endian PointCloud2: x, y, z, rgb, then extra fields.

    Args:
        xyz: (N, 3) real positions: FLOAT64 fields for float64 input (e.g. UTM coordinates), else FLOAT32.
        rgb: (N, 3) uint8 0..255, or float in [0, 1]; packed into a FLOAT32 ``rgb`` field with the
            bits 0x00RRGGBB (what RViz's RGB8 colour transformer reads); or (N,) uint32 already packed
            (:func:`packed_label_colors`); None leaves the field out.
        header: copied (frame_id and stamp) into the message.
        extra_fields: name -> (N,) array of int8/uint8/int16/uint16/int32/uint32/float32/float64
            (bool becomes uint8), e.g. ``instance_id`` int32, ``label_index`` int32, ``score`` float32.

    Fields are packed without padding in the order above; ``is_dense`` is True when all xyz are finite.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or not np.issubdtype(xyz.dtype, np.number):
        raise ValueError(f"xyz must be a numeric (N, 3) array, got shape {xyz.shape} dtype {xyz.dtype}")
    n = len(xyz)
    xyz_type = np.dtype("<f8") if xyz.dtype == np.float64 else np.dtype("<f4")   # float64 stays float64
    columns: list[tuple[str, np.dtype, np.ndarray]] = [
        (axis, xyz_type, xyz[:, k]) for k, axis in enumerate("xyz")]
    if rgb is not None:
        columns.append(("rgb", np.dtype("<u4"), _pack_rgb(rgb, n)))
    for name, values in (extra_fields or {}).items():
        values = np.asarray(values)
        if values.dtype == np.bool_:
            values = values.astype(np.uint8)
        dtype = values.dtype.newbyteorder("<")
        if not name or name in ("x", "y", "z", "rgb") or any(name == c[0] for c in columns):
            raise ValueError(f"extra field name {name!r} is empty or clashes with another field")
        if values.shape != (n,):
            raise ValueError(f"extra field {name!r} must have shape ({n},), got {values.shape}")
        if dtype not in _DATATYPE_OF_NUMPY:
            raise ValueError(f"extra field {name!r} has dtype {values.dtype}, which PointField cannot hold")
        columns.append((name, dtype, values))

    record = np.dtype([(name, dt) for name, dt, _ in columns])  # packed, no alignment padding
    data = array.array("B", b"\0") * (record.itemsize * n)      # the message's bytes, written in place below
    table = np.frombuffer(data, record)
    for name, _, values in columns:
        table[name] = values
    fields = [PointField(name=name, offset=record.fields[name][1],
                         datatype=PointField.FLOAT32 if name == "rgb" else _DATATYPE_OF_NUMPY[dt], count=1)
              for name, dt, _ in columns]
    msg = PointCloud2(header=copy_header(header), height=1, width=n, fields=fields, is_bigendian=False,
                      point_step=record.itemsize, row_step=record.itemsize * n,
                      is_dense=bool(np.isfinite(xyz).all()), check_fields=True)
    # with check_fields the setter keeps a uint8 array.array as it is; given to the constructor, or set
    # unchecked (Kilted's default), the bytes are copied once or twice (~1 ms each for 100k points)
    msg.data = data
    return msg


def _pack_rgb(rgb: np.ndarray, n: int) -> np.ndarray:
    """(N,) uint32 0x00RRGGBB from (N, 3) uint8 or float [0, 1] colours (or (N,) uint32, packed already)."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint32 and rgb.shape == (n,):
        return rgb & 0x00FFFFFF
    if rgb.shape != (n, 3):
        raise ValueError(f"rgb must have shape ({n}, 3), got {rgb.shape}")
    if rgb.dtype != np.uint8:
        if not np.issubdtype(rgb.dtype, np.floating):
            raise ValueError(f"rgb must be uint8 0..255 or float 0..1, got dtype {rgb.dtype}")
        rgb = np.round(np.clip(np.nan_to_num(rgb), 0.0, 1.0) * 255.0).astype(np.uint8)
    rgb = rgb.astype(np.uint32)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


# ---------------------------------------------------------------------------------------------
# Segmenter output -> per-point and per-instance arrays


def label_colors(label_indices: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colour of each label index from a fixed 20-colour palette (tab20).

    The same label index always gets the same colour (index mod 20); -1 (or any negative index)
    gets ``UNLABELED_COLOR``. Works on (M,) instance labels and (N,) per-point labels alike.
    """
    return np.take(_PALETTE, _palette_rows(label_indices), axis=0)


def packed_label_colors(label_indices: np.ndarray) -> np.ndarray:
    """:func:`label_colors` packed as uint32 0x00RRGGBB (a PointCloud2 ``rgb`` field), without the (..., 3)
    array."""
    return _PACKED_PALETTE[_palette_rows(label_indices)]


def _palette_rows(label_indices: np.ndarray) -> np.ndarray:
    """The palette row of each label index: index mod 20, or the unlabeled row for negative ones. Per-point
    labels span a few values: one table over their range is read once per point."""
    idx = np.asarray(label_indices)
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"label_indices must be integers, got dtype {idx.dtype}")

    def rows(values: np.ndarray) -> np.ndarray:
        return np.where(values < 0, len(_TAB20), np.mod(values, len(_TAB20)))

    lo, hi = int(idx.min(initial=0)), int(idx.max(initial=0))
    return rows(np.arange(lo, hi + 1))[idx - lo] if hi - lo < max(idx.size, 1) else rows(idx)


# ---------------------------------------------------------------------------------------------
# folk_ros_interfaces/InstanceArray


def instances_to_msg(header: Header, vocabulary: Sequence[str], point_indices_per_instance: Sequence[np.ndarray],
                     label_indices: np.ndarray, scores: np.ndarray, centroids: np.ndarray,
                     boxes_min: np.ndarray, boxes_max: np.ndarray, *, ids: np.ndarray | None = None,
                     observations: np.ndarray | None = None, first_seen: np.ndarray | None = None,
                     last_seen: np.ndarray | None = None, obb: OrientedBoxes | None = None) -> InstanceArray:
    """An InstanceArray with one Instance per row.

    Args:
        header: copied (the input cloud's frame_id and stamp).
        vocabulary: the V names the labels index into.
        point_indices_per_instance: M arrays of (K_i,) int, indices in the input message's row-major
            point order (0 <= i < 2**32).
        label_indices: (M,) int in [-1, V); -1 gives label "".
        scores: (M,) float. centroids, boxes_min, boxes_max: (M, 3).
        ids: (M,) instance ids in [0, 2**32) (map mode: stable ids); None = the row index.
        observations: (M,) clouds each was found in; None = 1.
        first_seen, last_seen: (M,) stamps in seconds; None = the header's stamp.
        obb: the M oriented boxes (:func:`folk_ros.core.geometry.oriented_boxes`); None = the axis-aligned
            boxes with yaw 0.
    """
    vocabulary = list(vocabulary)
    if not all(isinstance(v, str) for v in vocabulary):
        raise ValueError("vocabulary must be a list of strings")
    label_indices = np.asarray(label_indices)
    if label_indices.size and not np.issubdtype(label_indices.dtype, np.integer):
        raise ValueError(f"label_indices must be integers, got dtype {label_indices.dtype}")
    m = len(label_indices)
    scores = np.asarray(scores, np.float64).reshape(-1)
    geometry = {name: np.asarray(a, np.float64) for name, a in
                (("centroids", centroids), ("boxes_min", boxes_min), ("boxes_max", boxes_max))}
    if len(point_indices_per_instance) != m or scores.shape != (m,) or label_indices.ndim != 1:
        raise ValueError(f"need M point index arrays, (M,) label_indices and (M,) scores; got "
                         f"{len(point_indices_per_instance)}, {label_indices.shape}, {scores.shape}")
    for name, a in geometry.items():
        if a.shape != (m, 3):
            raise ValueError(f"{name} must have shape ({m}, 3), got {a.shape}")
    if m and (label_indices.min() < -1 or label_indices.max() >= len(vocabulary)):
        raise ValueError(f"label_indices must lie in [-1, {len(vocabulary)}), got "
                         f"[{label_indices.min()}, {label_indices.max()}]")
    ids = np.arange(m) if ids is None else np.asarray(ids).reshape(-1)
    observations = np.ones(m, np.int64) if observations is None else np.asarray(observations).reshape(-1)
    for name, a in (("ids", ids), ("observations", observations)):
        if a.shape != (m,) or (m and (a.min() < 0 or a.max() >= 2 ** 32)):
            raise ValueError(f"{name} must be (M,) integers in [0, 2**32), got shape {a.shape}")
    stamps = {}
    for name, a in (("first_seen", first_seen), ("last_seen", last_seen)):
        if a is None:
            stamps[name] = [header.stamp] * m
        else:
            a = np.asarray(a, np.float64).reshape(-1)
            if a.shape != (m,):
                raise ValueError(f"{name} must have shape ({m},), got {a.shape}")
            stamps[name] = [stamp_msg(t) for t in a]
    if obb is None:
        bmin, bmax = geometry["boxes_min"], geometry["boxes_max"]
        obb = OrientedBoxes((bmin + bmax) / 2.0, bmax - bmin, np.zeros(m))
    if len(obb) != m:
        raise ValueError(f"obb must hold {m} boxes, got {len(obb)}")
    point_indices = _uint32_arrays(point_indices_per_instance, "point indices of instance")
    rows = zip(ids.tolist(), label_indices.tolist(), scores.tolist(), observations.tolist(),
               geometry["centroids"].tolist(), geometry["boxes_min"].tolist(), geometry["boxes_max"].tolist(),
               obb.center.tolist(), obb.size.tolist(), obb.yaw.tolist(), stamps["first_seen"], stamps["last_seen"],
               point_indices)
    # Instance() builds its default sub-messages (~11 us); a shallow copy of an empty one (~1 us) gets every
    # field set below, sub-messages new, so no two instances share a mutable part
    template = Instance()
    instances = []
    for iid, li, score, seen, c, lo, hi, obb_c, obb_s, yaw, first, last, indices in rows:
        inst = shallow_copy(template)
        inst.id, inst.label, inst.label_index, inst.score = iid, vocabulary[li] if li >= 0 else "", li, score
        inst.point_indices, inst.observations = indices, seen
        inst.centroid, inst.bbox_min, inst.bbox_max = point(c), point(lo), point(hi)
        inst.first_seen, inst.last_seen = copy_time(first), copy_time(last)
        inst.obb_pose = pose(point(obb_c), yaw_quaternion(yaw))
        inst.obb_size = Vector3(x=obb_s[0], y=obb_s[1], z=obb_s[2])
        instances.append(inst)
    return InstanceArray(header=copy_header(header), vocabulary=vocabulary, instances=instances)


def stamp_seconds(stamp: Time) -> float:
    """A builtin_interfaces/Time as float seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def stamp_msg(seconds: float) -> Time:
    """Float seconds (>= 0) as a builtin_interfaces/Time."""
    nanos = int(round(float(seconds) * 1e9))
    if nanos < 0:
        raise ValueError(f"a stamp must be >= 0 s, got {seconds}")
    sec, nanosec = divmod(nanos, 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def _uint32_arrays(index_sets: Sequence[np.ndarray], what: str) -> list[array.array]:
    """uint32[] message fields of M integer arrays, checked and converted in one pass over all of them."""
    sets = [np.asarray(values).reshape(-1) for values in index_sets]
    for i, values in enumerate(sets):
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{what} {i} must be integers in [0, 2**32), got dtype {values.dtype}")
    flat = np.concatenate([v.astype(np.int64, copy=False) for v in sets]) if sets else np.zeros(0, np.int64)
    ends = np.cumsum([v.size for v in sets], dtype=np.int64)
    wrong = (flat < 0) | (flat >= 2 ** 32)
    if wrong.any():
        bad = int(np.searchsorted(ends, np.argmax(wrong), side="right"))
        raise ValueError(f"{what} {bad} must be integers in [0, 2**32), got values in "
                         f"[{sets[bad].min()}, {sets[bad].max()}]")
    raw = memoryview(flat.astype(np.uint32).view(np.uint8))
    out = []
    for start, end in zip([0, *(ends[:-1] * 4).tolist()], (ends * 4).tolist()):
        values = array.array("I")
        values.frombytes(raw[start:end])
        out.append(values)
    return out
