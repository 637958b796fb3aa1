"""sensor_msgs/PointCloud2 data -> :class:`PointCloud`, without ROS (the one decoder of folk_ros).

The node (:func:`folk_ros.ros.conversions.cloud_from_msg`) and the bag reader of the offline tools
(:func:`training.data.rosbag_io.pointcloud2_to_arrays`) both decode through :func:`decode_pointcloud2`,
so a cloud means the same to the robot and to training (e.g. float r, g, b channels in 0..255).
Fields are any objects with ``name``, ``offset``, ``datatype`` and ``count`` (rclpy's and rosbags'
PointField alike); the datatype numbers are sensor_msgs/PointField's.
"""

from __future__ import annotations

import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from folk_ros.core.cloud import DEFAULT_RGB, PointCloud

# sensor_msgs/PointField datatypes
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = range(1, 9)
NUMPY_CODE = {INT8: "i1", UINT8: "u1", INT16: "i2", UINT16: "u2", INT32: "i4", UINT32: "u4", FLOAT32: "f4",
              FLOAT64: "f8"}
DATATYPE_NAME = {INT8: "INT8", UINT8: "UINT8", INT16: "INT16", UINT16: "UINT16", INT32: "INT32", UINT32: "UINT32",
                 FLOAT32: "FLOAT32", FLOAT64: "FLOAT64"}
_XYZ_TYPES = (FLOAT32, FLOAT64)
_PACKED_TYPES = (FLOAT32, UINT32, INT32)  # 4 bytes, 0x00RRGGBB bits
_CHANNEL_TYPES = (UINT8, FLOAT32, FLOAT64)
RECENTRE_BEYOND_M = 1000.0    # clouds whose median lies farther from the frame's origin are recentred
MAX_RANGE_M = 10_000.0        # points farther from the (re)centre are non-physical outliers: dropped


class CloudFormatError(ValueError):
    """A PointCloud2 whose layout cannot be read (the message says what is wrong)."""


@dataclass(frozen=True)
class CloudConversion:
    """The result of :func:`cloud_from_msg`.

    Attributes:
        cloud: the K finite points as a :class:`PointCloud`.
        indices: (K,) int64 index of each kept point in the message's row-major point order
            (``row * width + column``); use it to report instance points against the input cloud.
        had_color: whether the message carried colour (``rgb``/``rgba`` or ``r``, ``g``, ``b``).
        dropped_nonfinite: number of points dropped because x, y or z was NaN/inf.
        origin: (3,) float64 metres subtracted (in float64) from every point before the float32 cast, so
            that clouds in UTM-like coordinates keep their precision and voxel indices stay small;
            ``cloud.xyz + origin`` are the input coordinates. 0 for clouds near their frame's origin.
        dropped_far: number of points dropped because they lay farther than ``max_range`` from the origin.
    """

    cloud: PointCloud
    indices: np.ndarray
    had_color: bool
    dropped_nonfinite: int
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))   # (3,) float64: cloud.xyz + origin = input
    dropped_far: int = 0        # points farther than max_range from the origin (non-physical outliers)


# ---------------------------------------------------------------------------------------------
# PointCloud2 -> PointCloud


def choose_origin(xyz: np.ndarray, recentre_beyond: float = RECENTRE_BEYOND_M) -> np.ndarray:
    """(3,) float64 origin for finite (N, 3) float64 points: 0 when their median lies within
    ``recentre_beyond`` of the frame's origin, else the median rounded to whole metres (so voxel grids of
    sizes dividing 1 m keep their alignment). The median of a strided sample: one stray point moves it
    nowhere."""
    if len(xyz) == 0:
        return np.zeros(3)
    sample = xyz[:: max(1, len(xyz) // 20_000)]
    median = np.percentile(sample, 50, axis=0, method="lower")   # a point of the cloud, never between two
    return np.round(median) if np.abs(median).max() > recentre_beyond else np.zeros(3)


def decode_pointcloud2(fields: Sequence, data, height: int, width: int, point_step: int, row_step: int,
                       is_bigendian: bool = False, default_rgb=DEFAULT_RGB, origin=None,
                       max_range: float = MAX_RANGE_M) -> CloudConversion:
    """Read PointCloud2 data into a :class:`PointCloud`, vectorised and without loops.

    Accepted layouts:
        - ``x``, ``y``, ``z``: FLOAT32 or FLOAT64, count 1 (required).
        - colour, first match wins:
            1. packed ``rgb`` then ``rgba``: FLOAT32, UINT32 or INT32, read as the raw 32 bits in the
               PCL convention 0x00RRGGBB (the alpha byte of ``rgba`` is ignored);
            2. separate ``r``, ``g``, ``b`` (all three, one datatype): UINT8 is 0..255; FLOAT32/FLOAT64
               are taken as 0..1 when no finite kept value exceeds 1.0, else as 0..255 (one rule for
               the whole cloud); the result is clipped to [0, 1] and NaN becomes 0;
            3. none: every point gets ``default_rgb`` and ``had_color`` is False.
        - any ``point_step``/``row_step`` padding, ``height`` > 1 (organised clouds), either
          ``is_bigendian``; ``is_dense`` is ignored: points with NaN/inf x, y or z are always dropped.
        - coordinates of any size (UTM northings, a stray point at 1e30 m): read in float64, recentred
          on ``origin`` before the float32 cast, points beyond ``max_range`` of it dropped.
        - other fields are ignored (but must not overlap or stick out of ``point_step``).

    Args:
        fields, data, height, width, point_step, row_step, is_bigendian: the message's (``data`` may be
            array.array('B'), bytes or any buffer).
        default_rgb: colour in [0, 1] for clouds without colour fields.
        origin: (3,) metres to subtract from every point (in float64, before the float32 cast); None =
            :func:`choose_origin` of this cloud. Keep one origin for clouds that must share coordinates
            (the live map does).
        max_range: points farther than this from the origin on any axis are dropped (counted in
            ``dropped_far``): non-physical outliers must not make the cloud unusable.

    Raises:
        CloudFormatError: missing x/y/z, wrong datatypes or counts, duplicate or overlapping fields,
            point_step too small for the fields, width * point_step > row_step, or data shorter
            than row_step * height.
    """
    if np.shape(default_rgb) != (3,):
        raise ValueError(f"default_rgb must be 3 numbers in [0, 1], got {default_rgb!r}")
    height, width = int(height), int(width)
    point_step, row_step = int(point_step), int(row_step)
    fields = _checked_fields(fields, point_step)
    xyz_fields = [_xyz_field(fields, axis) for axis in "xyz"]
    color_fields, color_kind = _color_fields(fields)
    n = height * width
    if n > 0 and width * point_step > row_step:
        raise CloudFormatError(f"PointCloud2 width * point_step = {width} * {point_step} = "
                               f"{width * point_step} exceeds row_step {row_step}")
    data = data if isinstance(data, (bytes, bytearray, memoryview, array.array)) else np.asarray(data, np.uint8)
    buf = np.frombuffer(data, np.uint8)
    if n > 0 and row_step * height > buf.size:
        raise CloudFormatError(f"PointCloud2 is truncated: row_step * height = {row_step} * {height} = "
                               f"{row_step * height} bytes but data has {buf.size}")

    byte_order = ">" if is_bigendian else "<"
    used = xyz_fields + color_fields
    view_dtype = np.dtype({
        "names": [f.name for f in used],
        "formats": [byte_order + ("u4" if color_kind == "packed" and f in color_fields
                                  else NUMPY_CODE[f.datatype]) for f in used],
        "offsets": [int(f.offset) for f in used],
        "itemsize": max(point_step, 1),
    })
    if n > 0:
        points = np.ndarray((height, width), view_dtype, buffer=buf, strides=(row_step, point_step))
    else:
        points = np.zeros((height, width), view_dtype)

    if origin is None:
        origin = choose_origin(_sample_xyz(points))
    origin = np.asarray(origin, np.float64).reshape(3)
    xyz, finite_and_near = _read_xyz(points, xyz_fields, origin, max_range)
    all_kept = bool(finite_and_near.all())
    if all_kept:
        indices = np.arange(n, dtype=np.int64)
        dropped_nonfinite = dropped_far = 0
    else:
        indices = np.flatnonzero(finite_and_near).astype(np.int64)
        xyz = xyz.take(indices, axis=0)
        finite = np.isfinite(points["x"]) & np.isfinite(points["y"]) & np.isfinite(points["z"])
        dropped_nonfinite = int(n - np.count_nonzero(finite))
        dropped_far = int(n - indices.size - dropped_nonfinite)
    xyz = xyz.astype(np.float32, copy=False)

    if color_kind == "packed":
        packed = np.empty((height, width), "<u4")
        packed[...] = points[color_fields[0].name]
        rgb = packed.reshape(-1, 1).view(np.uint8)[:, 2::-1]  # little-endian bytes B, G, R, A -> R, G, B
        rgb = rgb if all_kept else rgb.take(indices, axis=0)
    elif color_kind == "channels":
        rgb = _channels_to_rgb(points, color_fields, None if all_kept else indices)
    else:
        rgb = np.empty((indices.size, 3), np.float32)
        rgb[...] = np.asarray(default_rgb, np.float32)
    if rgb.dtype == np.uint8:
        rgb = np.divide(rgb, np.float32(255.0), dtype=np.float32)  # as PointCloud.from_arrays does
    # The PointCloud constructor validates (finite xyz, rgb in [0, 1]) without from_arrays' extra copies.
    cloud = PointCloud(xyz, np.ascontiguousarray(rgb, np.float32))
    return CloudConversion(cloud=cloud, indices=indices, had_color=color_kind is not None,
                           dropped_nonfinite=dropped_nonfinite, origin=origin, dropped_far=dropped_far)


def _sample_xyz(points: np.ndarray) -> np.ndarray:
    """(S, 3) float64 finite x, y, z of a strided sample of about 20,000 points (for the origin)."""
    flat = points.reshape(-1)
    sample = flat[:: max(1, flat.size // 20_000)]
    xyz = np.stack([sample[a].astype(np.float64) for a in "xyz"], axis=1)
    return xyz[np.isfinite(xyz).all(axis=1)]


def _read_xyz(points: np.ndarray, xyz_fields: list, origin: np.ndarray, max_range: float):
    """(N, 3) coordinates minus ``origin`` and the (N,) mask of points that are finite and within
    ``max_range`` of it on every axis. FLOAT32 fields and a zero origin are read straight into float32
    (the common case, one copy); otherwise in float64, so subtracting a large origin loses nothing."""
    direct = not origin.any() and all(f.datatype == FLOAT32 for f in xyz_fields)
    xyz = np.empty(points.shape + (3,), np.float32 if direct else np.float64)
    for axis, name in enumerate("xyz"):
        xyz[..., axis] = points[name]
    xyz = xyz.reshape(-1, 3)
    if not direct and origin.any():
        xyz -= origin
    with np.errstate(invalid="ignore"):     # NaN compares False: non-finite points fail the range test
        near = np.abs(xyz) <= max_range
    return xyz, near[:, 0] & near[:, 1] & near[:, 2]


def _checked_fields(fields: Sequence, point_step: int) -> dict:
    """Fields by name, after checking names are unique and extents fit and do not overlap."""
    dup = sorted(name for name, c in Counter(f.name for f in fields).items() if c > 1)
    if dup:
        raise CloudFormatError(f"PointCloud2 has duplicate fields: {', '.join(dup)}")
    extents = []
    for f in fields:
        if f.datatype not in NUMPY_CODE or f.count == 0:
            continue  # unknown size or empty: cannot overlap anything we read (used fields are checked)
        end = int(f.offset) + np.dtype(NUMPY_CODE[f.datatype]).itemsize * int(f.count)
        if end > point_step:
            raise CloudFormatError(f"PointCloud2 point_step {point_step} is too small: field '{f.name}' "
                                   f"ends at byte {end}")
        extents.append((int(f.offset), end, f.name))
    extents.sort()
    for (_, end_a, name_a), (start_b, _, name_b) in zip(extents, extents[1:]):
        if start_b < end_a:
            raise CloudFormatError(f"PointCloud2 fields '{name_a}' and '{name_b}' overlap")
    return {f.name: f for f in fields}


def _xyz_field(fields: Mapping, name: str) -> object:
    if name not in fields:
        raise CloudFormatError(f"PointCloud2 has no '{name}' field (fields: {', '.join(fields) or 'none'})")
    f = fields[name]
    if f.datatype not in _XYZ_TYPES:
        raise CloudFormatError(f"PointCloud2 field '{name}' has datatype {_datatype_name(f.datatype)}; "
                               f"expected FLOAT32 or FLOAT64")
    if f.count != 1:
        raise CloudFormatError(f"PointCloud2 field '{name}' has count {f.count}; expected 1")
    return f


def _color_fields(fields: Mapping) -> tuple[list, str | None]:
    """The colour fields to read and their kind: 'packed', 'channels' or None."""
    for name in ("rgb", "rgba"):
        if name in fields:
            f = fields[name]
            if f.datatype not in _PACKED_TYPES or f.count != 1:
                raise CloudFormatError(f"PointCloud2 field '{name}' has datatype {_datatype_name(f.datatype)} "
                                       f"and count {f.count}; expected one FLOAT32 or UINT32 (0x00RRGGBB)")
            return [f], "packed"
    present = [c for c in "rgb" if c in fields]
    if not present:
        return [], None
    if len(present) < 3:
        missing = [c for c in "rgb" if c not in fields]
        raise CloudFormatError(f"PointCloud2 has colour fields {', '.join(present)} "
                               f"but not {', '.join(missing)}")
    chans = [fields[c] for c in "rgb"]
    types = {f.datatype for f in chans}
    if len(types) != 1 or chans[0].datatype not in _CHANNEL_TYPES or any(f.count != 1 for f in chans):
        raise CloudFormatError("PointCloud2 fields r, g, b must share one datatype (UINT8, FLOAT32 or FLOAT64) "
                               "with count 1, got " + ", ".join(f"{_datatype_name(f.datatype)} x{f.count}"
                                                                for f in chans))
    return chans, "channels"


def _channels_to_rgb(points: np.ndarray, chans: list, indices: np.ndarray | None) -> np.ndarray:
    """(K, 3) uint8 or float32 [0, 1] colours from separate r, g, b fields (rule in cloud_from_msg)."""
    is_u8 = chans[0].datatype == UINT8
    out = np.empty(points.shape + (3,), np.uint8 if is_u8 else np.float32)
    for k, f in enumerate(chans):
        out[..., k] = points[f.name]
    out = out.reshape(-1, 3)
    out = out if indices is None else out.take(indices, axis=0)
    if is_u8:
        return out
    finite = np.isfinite(out)
    if finite.any() and out[finite].max() > 1.0:
        out = out / np.float32(255.0)
    return np.clip(np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def _datatype_name(datatype: int) -> str:
    return DATATYPE_NAME.get(int(datatype), f"{int(datatype)} (unknown)")
