"""ROS 2 bags (mcap) of RGB-D frames and fused clouds without a ROS install: the messages both ways, and
writing (:func:`write_bag`); reading and pairing by stamp is :mod:`training.data.bag_reader`.

Uses the ``rosbags`` library with its ROS 2 Kilted typestore (the distro of the rclpy wheels
we run; ``../shared/notes/ros2-from-pypi.md``). Topics and types (:data:`BAG_TOPICS`)::

    color        sensor_msgs/Image        rgb8 (read: rgb8, bgr8, rgba8, bgra8)
    depth        sensor_msgs/Image        16UC1 millimetres (0 = none) or 32FC1 metres (NaN = none)
    camera_info  sensor_msgs/CameraInfo   K, P, plumb_bob zero distortion
    pose         geometry_msgs/PoseStamped camera-to-world (OpenCV camera) in the map frame
    cloud        sensor_msgs/PointCloud2  x, y, z float32 + rgb packed in a float32 (PCL convention)

The bag timestamp of every message is its header stamp. Readers pair by header stamps,
so bags recorded by a real robot (bag time = receive time) read the same way.
"""

from __future__ import annotations

import heapq
import shutil
import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from folk_ros.core.pointcloud2 import decode_pointcloud2
from training.data.types import BAG_TOPICS, Frame

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POSE = "geometry_msgs/msg/PoseStamped"
CLOUD = "sensor_msgs/msg/PointCloud2"
ROLE_TYPES = {"color": IMAGE, "depth": IMAGE, "camera_info": CAMERA_INFO, "pose": POSE, "cloud": CLOUD}

# encoding -> (channels, channel order giving RGB)
COLOR_ENCODINGS = {"rgb8": (3, [0, 1, 2]), "bgr8": (3, [2, 1, 0]),
                   "rgba8": (4, [0, 1, 2]), "bgra8": (4, [2, 1, 0])}
DEPTH_ENCODINGS = ("16UC1", "32FC1")

# sensor_msgs/PointField datatypes -> numpy type characters
FLOAT32 = 7


@lru_cache(maxsize=1)
def typestore():
    """The rosbags typestore for ROS 2 Kilted."""
    return get_typestore(Stores.ROS2_KILTED)


# --------------------------------------------------------------------------- time


def seconds_to_ns(stamp: float) -> int:
    return int(round(float(stamp) * 1e9))


def _time(ns: int):
    sec, nanosec = divmod(ns, 1_000_000_000)
    return typestore().types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def _header(ns: int, frame_id: str):
    return typestore().types["std_msgs/msg/Header"](stamp=_time(ns), frame_id=frame_id)


def stamp_ns(header) -> int:
    """Header stamp in integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def header_stamp_ns(raw: bytes | memoryview) -> int:
    """Header stamp (ns) of a serialised message whose first field is a std_msgs/Header.

    Reads the two 32-bit words after the 4-byte CDR encapsulation header (byte 1 odd =
    little endian), so image payloads need not be deserialised to learn their time.
    """
    if len(raw) < 12:
        raise ValueError(f"message of {len(raw)} bytes is too short to hold a header stamp")
    sec, nanosec = struct.unpack_from("<iI" if raw[1] & 1 else ">iI", raw, 4)
    return sec * 1_000_000_000 + nanosec


# --------------------------------------------------------------------------- message builders


def image_msg(array: np.ndarray, encoding: str, ns: int, frame_id: str):
    """(H, W) or (H, W, C) array -> sensor_msgs/Image (little endian, no row padding)."""
    array = np.ascontiguousarray(array)
    h, w = array.shape[:2]
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(-1)
    return typestore().types[IMAGE](header=_header(ns, frame_id), height=h, width=w, encoding=encoding,
                                    is_bigendian=0, step=data.size // h, data=data)


def camera_info_msg(k: np.ndarray, width: int, height: int, ns: int, frame_id: str):
    """(3, 3) pinhole matrix -> sensor_msgs/CameraInfo (plumb_bob, zero distortion, R = I, P = [K | 0])."""
    t = typestore().types
    k = np.asarray(k, np.float64)
    p = np.zeros((3, 4))
    p[:, :3] = k
    roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return t[CAMERA_INFO](header=_header(ns, frame_id), height=height, width=width,
                          distortion_model="plumb_bob", d=np.zeros(5), k=k.reshape(-1),
                          r=np.eye(3).reshape(-1), p=p.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def pose_msg(pose: np.ndarray, ns: int, frame_id: str):
    """(4, 4) camera-to-world -> geometry_msgs/PoseStamped."""
    t = typestore().types
    pose = np.asarray(pose, np.float64)
    x, y, z, w = Rotation.from_matrix(pose[:3, :3]).as_quat()
    return t[POSE](
        header=_header(ns, frame_id),
        pose=t["geometry_msgs/msg/Pose"](
            position=t["geometry_msgs/msg/Point"](x=pose[0, 3], y=pose[1, 3], z=pose[2, 3]),
            orientation=t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)),
    )


def pose_to_matrix(msg) -> np.ndarray:
    """geometry_msgs/Pose(Stamped) -> (4, 4) float64."""
    pose = getattr(msg, "pose", msg)
    q, p = pose.orientation, pose.position
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    m[:3, 3] = (p.x, p.y, p.z)
    return m


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N,) uint32 ``0x00RRGGBB`` (the bits PCL stores in its float32 ``rgb`` field)."""
    rgb = np.asarray(rgb, np.uint32)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(N,) uint32 ``0x??RRGGBB`` -> (N, 3) uint8."""
    packed = np.asarray(packed, np.uint32)
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)


def cloud_msg(xyz: np.ndarray, rgb: np.ndarray, ns: int, frame_id: str):
    """(N, 3) float32 xyz + (N, 3) uint8 rgb -> sensor_msgs/PointCloud2.

    Fields x, y, z, rgb, all FLOAT32 (rgb holds the bits of ``0x00RRGGBB``), 16 bytes a point.
    """
    t = typestore().types
    xyz = np.asarray(xyz)
    n = len(xyz)
    if xyz.shape != (n, 3) or np.asarray(rgb).shape != (n, 3):
        raise ValueError(f"cloud needs xyz (N, 3) and rgb (N, 3), got {xyz.shape}, {np.asarray(rgb).shape}")
    rec = np.empty(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    rec["x"], rec["y"], rec["z"] = xyz.astype(np.float32).T
    rec["rgb"] = pack_rgb(rgb)  # uint32 bits, declared FLOAT32 below (PCL convention)
    fields = [t["sensor_msgs/msg/PointField"](name=name, offset=4 * i, datatype=FLOAT32, count=1)
              for i, name in enumerate(("x", "y", "z", "rgb"))]
    return t[CLOUD](header=_header(ns, frame_id), height=1, width=n, fields=fields, is_bigendian=False,
                    point_step=16, row_step=16 * n, data=rec.view(np.uint8).reshape(-1),
                    is_dense=bool(np.isfinite(xyz).all()))


# --------------------------------------------------------------------------- decoding


def _as_bytes(data) -> np.ndarray:
    """A message's byte payload (uint8 ndarray from rosbags, bytes or array from rclpy) as (B,) uint8."""
    if isinstance(data, np.ndarray):
        return np.asarray(data, np.uint8).reshape(-1)
    return np.frombuffer(data, np.uint8)


def _image_array(msg, channels: int, dtype: str) -> np.ndarray:
    """Image payload -> (H, W, channels) array of ``dtype`` honouring step and endianness."""
    h, w = int(msg.height), int(msg.width)
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row = w * channels * dt.itemsize
    buf = _as_bytes(msg.data)
    if msg.step < row or buf.size < h * msg.step:
        raise ValueError(f"image {w}x{h} {msg.encoding}: step {msg.step} / {buf.size} bytes too small")
    rows = buf[: h * msg.step].reshape(h, msg.step)[:, :row]
    return np.ascontiguousarray(rows).view(dt).reshape(h, w, channels).astype(dt.newbyteorder("="))


def decode_color(msg) -> np.ndarray:
    """sensor_msgs/Image rgb8/bgr8/rgba8/bgra8 -> (H, W, 3) uint8 RGB."""
    if msg.encoding not in COLOR_ENCODINGS:
        raise ValueError(f"colour image encoding {msg.encoding!r} is not one of {sorted(COLOR_ENCODINGS)}")
    channels, order = COLOR_ENCODINGS[msg.encoding]
    return np.ascontiguousarray(_image_array(msg, channels, "u1")[..., order])


def decode_depth(msg) -> np.ndarray:
    """sensor_msgs/Image 16UC1 (mm) or 32FC1 (m) -> (H, W) float32 metres, 0 where invalid."""
    if msg.encoding == "16UC1":
        return _image_array(msg, 1, "u2")[..., 0].astype(np.float32) / 1000.0
    if msg.encoding == "32FC1":
        d = _image_array(msg, 1, "f4")[..., 0]
        return np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
    raise ValueError(f"depth image encoding {msg.encoding!r} is not one of {list(DEPTH_ENCODINGS)}")


def pointcloud2_to_arrays(
    fields: Sequence,
    point_step: int,
    data,
    is_bigendian: bool = False,
    width: int | None = None,
    height: int = 1,
    row_step: int | None = None,
    remove_nans: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode PointCloud2 data with the node's decoder (:func:`folk_ros.core.pointcloud2.decode_pointcloud2`),
    so training reads a cloud exactly as the robot does (packed rgb/rgba, or r, g, b channels: uint8, or
    float in 0..1 or 0..255 by the same rule).

    Args:
        fields: PointField-like objects (``name``, ``offset``, ``datatype``, ``count``); needs x, y, z.
        point_step: bytes per point.
        data: the message's byte buffer (bytes, array or uint8 ndarray).
        is_bigendian: byte order of the fields.
        width, height, row_step: cloud shape; rows padded beyond ``width * point_step`` are
            handled. Without ``width`` the buffer is read as ``len(data) // point_step`` points.
        remove_nans: drop points with a non-finite coordinate (organised clouds mark holes so); when
            False they stay, as NaN xyz with colour 0.

    Returns:
        xyz (N, 3) float32 and rgb (N, 3) uint8 (zeros when the cloud has no colour).

    Raises:
        CloudFormatError (a ValueError): a layout the decoder cannot read.
    """
    size = _as_bytes(data).size
    if width is None:
        width, height = size // point_step, 1
    if row_step is None:
        row_step = width * point_step
    conv = decode_pointcloud2(fields, data, height, width, point_step, row_step, is_bigendian, default_rgb=(0, 0, 0))
    rgb = np.round(conv.cloud.rgb * 255.0).astype(np.uint8)
    if remove_nans:
        return conv.cloud.xyz, rgb
    n = width * height
    xyz_all = np.full((n, 3), np.nan, np.float32)
    rgb_all = np.zeros((n, 3), np.uint8)
    xyz_all[conv.indices], rgb_all[conv.indices] = conv.cloud.xyz, rgb
    return xyz_all, rgb_all


# --------------------------------------------------------------------------- writing


def _frame_messages(frame: Frame, topics: dict, frame_id: str, map_frame: str, depth_encoding: str):
    ns = seconds_to_ns(frame.stamp)
    if depth_encoding == "16UC1":
        d = np.where(np.isfinite(frame.depth) & (frame.depth > 0), frame.depth, 0.0)
        depth = np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)
    else:
        depth = np.where(frame.depth > 0, frame.depth, np.nan).astype(np.float32)
    h, w = frame.depth.shape
    if frame.color.shape != (h, w, 3) or frame.color.dtype != np.uint8:
        raise ValueError(f"frame {frame.index}: color must be ({h}, {w}, 3) uint8, "
                         f"got {frame.color.shape} {frame.color.dtype}")
    return [
        (topics["color"], image_msg(frame.color, "rgb8", ns, frame_id)),
        (topics["depth"], image_msg(depth, depth_encoding, ns, frame_id)),
        (topics["camera_info"], camera_info_msg(frame.intrinsics, w, h, ns, frame_id)),
        (topics["pose"], pose_msg(frame.pose, ns, map_frame)),
    ]


def write_bag(
    bag_path: Path,
    frames: Iterable[Frame],
    clouds: Iterable[tuple[float, np.ndarray, np.ndarray]] = (),
    topics: dict = BAG_TOPICS,
    frame_id: str = "camera",
    map_frame: str = "map",
    depth_encoding: str = "16UC1",
    progress: bool = False,
) -> None:
    """Write RGB-D frames and fused clouds into a new ROS 2 bag (mcap storage), streaming both.

    Per frame: colour Image (rgb8), depth Image (``depth_encoding``: 16UC1 mm or 32FC1 m),
    CameraInfo, PoseStamped (camera-to-world in ``map_frame``), all stamped ``frame.stamp``.
    Per cloud ``(stamp seconds, xyz (N, 3) float32, rgb (N, 3) uint8)``: a PointCloud2 in
    ``map_frame``. The two iterables are merged by stamp (each is read lazily, one item ahead),
    so time-sorted inputs give a time-sorted bag. On an error the partial bag is removed.

    Raises:
        FileExistsError: ``bag_path`` exists.
        ValueError: bad encoding, bad arrays, or frame stamps not strictly increasing.
    """
    bag_path = Path(bag_path)
    if depth_encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"depth_encoding must be one of {DEPTH_ENCODINGS}, got {depth_encoding!r}")
    if bag_path.exists():
        raise FileExistsError(f"{bag_path} exists; rosbag2 writers do not overwrite")
    store = typestore()

    def frame_items():
        last = -np.inf
        for frame in frames:
            if not frame.stamp > last:
                raise ValueError(f"frame {frame.index}: stamp {frame.stamp} is not after the previous {last}")
            last = frame.stamp
            yield seconds_to_ns(frame.stamp), frame

    def cloud_items():
        for stamp, xyz, rgb in clouds:
            yield seconds_to_ns(stamp), (xyz, rgb)

    writer = Writer(bag_path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    try:
        conns = {}
        for role in ("color", "depth", "camera_info", "pose", "cloud"):
            topic = topics[role]
            conns[topic] = writer.add_connection(topic, ROLE_TYPES[role], typestore=store)
        items = heapq.merge(frame_items(), cloud_items(), key=lambda item: item[0])
        for ns, payload in tqdm(items, desc=f"write {bag_path.name}", unit="msg", disable=not progress):
            if isinstance(payload, Frame):
                msgs = _frame_messages(payload, topics, frame_id, map_frame, depth_encoding)
            else:
                msgs = [(topics["cloud"], cloud_msg(payload[0], payload[1], ns, map_frame))]
            for topic, msg in msgs:
                writer.write(conns[topic], ns, store.serialize_cdr(msg, msg.__msgtype__))
        writer.close()
    except BaseException:
        writer.abort()
        shutil.rmtree(bag_path, ignore_errors=True)
        raise
