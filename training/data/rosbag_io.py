"""ROS 2 bags (mcap) of RGB-D frames and fused clouds, written and read without a ROS install.

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
import logging
import shutil
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from folk_ros.core.pointcloud2 import decode_pointcloud2
from training.data.types import BAG_TOPICS, Frame

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- reading


def bag_topics(bag_path: Path) -> dict[str, str]:
    """{topic: message type} of a bag."""
    with Reader(bag_path) as reader:
        return {name: info.msgtype for name, info in reader.topics.items()}


def _connections(reader: Reader, topics: dict, roles: Sequence[str]) -> dict[int, str]:
    """{connection id: role} for the roles' topics; ValueError naming the bag's topics if one is missing."""
    have = {c.topic: c.msgtype for c in reader.connections}
    out = {}
    for role in roles:
        topic = topics[role]
        if topic not in have:
            raise ValueError(f"{reader.path}: no topic {topic!r} ({role}); the bag has "
                             + ", ".join(f"{t} [{m}]" for t, m in sorted(have.items())))
        if have[topic] != ROLE_TYPES[role]:
            raise ValueError(
                f"{reader.path}: topic {topic!r} ({role}) is {have[topic]}, expected {ROLE_TYPES[role]}"
            )
        out.update({c.id: role for c in reader.connections if c.topic == topic})
    return out


def _nearest(sorted_t: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index into ``sorted_t`` (M,) of the nearest value to each query (Q,), and |difference| (Q,)."""
    if sorted_t.size == 0:
        return np.zeros(len(query), np.int64), np.full(len(query), np.iinfo(np.int64).max)
    hi = np.clip(np.searchsorted(sorted_t, query), 0, len(sorted_t) - 1)
    lo = np.maximum(hi - 1, 0)
    pick = np.where(np.abs(sorted_t[lo] - query) <= np.abs(sorted_t[hi] - query), lo, hi)
    return pick, np.abs(sorted_t[pick] - query)


@dataclass
class FramePlan:
    """Which messages make which frame; (F,) int64 arrays, indices are per-topic message numbers."""

    color: np.ndarray  # colour message number (= Frame.index)
    depth: np.ndarray  # depth message number
    pose: np.ndarray  # pose message number
    info: np.ndarray  # camera-info message number


def pair_frames(
    stamps: dict[str, np.ndarray], every: int, tolerance_ns: int, pose_tolerance_ns: int
) -> tuple[FramePlan, dict[str, int]]:
    """Pair every ``every``-th colour message with the nearest depth and pose (within tolerance)
    and the latest camera info at or before it (the first one when none precedes).

    Args:
        stamps: role (color, depth, pose, camera_info) -> (M,) int64 header stamps (ns) in bag order.
        every: colour subsampling step.
        tolerance_ns, pose_tolerance_ns: max |stamp difference| to the colour stamp.

    Returns:
        The plan and counts of dropped frames {"no_depth": .., "no_pose": ..}.
    """
    sel = np.arange(len(stamps["color"]))[::every]
    ct = stamps["color"][sel]
    d_order = np.argsort(stamps["depth"], kind="stable")
    di, ddiff = _nearest(stamps["depth"][d_order], ct)
    p_order = np.argsort(stamps["pose"], kind="stable")
    pi, pdiff = _nearest(stamps["pose"][p_order], ct)
    i_order = np.argsort(stamps["camera_info"], kind="stable")
    ii = np.clip(np.searchsorted(stamps["camera_info"][i_order], ct, side="right") - 1, 0, None)
    has_depth = ddiff <= tolerance_ns
    has_pose = pdiff <= pose_tolerance_ns
    keep = has_depth & has_pose
    dropped = {"no_depth": int((~has_depth).sum()), "no_pose": int((has_depth & ~has_pose).sum())}
    plan = FramePlan(color=sel[keep], depth=d_order[di[keep]], pose=p_order[pi[keep]], info=i_order[ii[keep]])
    return plan, dropped


def _scale_intrinsics(k: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """(3, 3) K for an image of (H, W) ``src`` resized to ``dst`` (pixel-centre convention)."""
    if src == dst:
        return k.copy()
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    out = k.copy()
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
    return out


@dataclass
class _BagIndex:
    """First pass over a bag: every stamp, and the (small) pose and camera-info messages."""

    stamps: dict[str, np.ndarray]  # role -> (M,) int64 header stamps (ns), bag order
    poses: list[np.ndarray]  # (4, 4) camera-to-world per pose message
    infos: list[tuple[np.ndarray, tuple[int, int]]]  # (K (3, 3), (H, W)) per camera-info message


def _index_bag(reader: Reader, roles: dict[int, str]) -> _BagIndex:
    store = typestore()
    stamps: dict[str, list[int]] = {"color": [], "depth": [], "camera_info": [], "pose": []}
    poses, infos = [], []
    conns = [c for c in reader.connections if c.id in roles]
    for conn, _, raw in reader.messages(connections=conns):
        role = roles[conn.id]
        if role in ("color", "depth"):  # images: the stamp only, no deserialisation
            stamps[role].append(header_stamp_ns(raw))
            continue
        msg = store.deserialize_cdr(raw, conn.msgtype)
        stamps[role].append(stamp_ns(msg.header))
        if role == "pose":
            poses.append(pose_to_matrix(msg))
        else:
            infos.append((np.asarray(msg.k, np.float64).reshape(3, 3), (int(msg.height), int(msg.width))))
    return _BagIndex({r: np.asarray(v, np.int64) for r, v in stamps.items()}, poses, infos)


def _planned_images(
    reader: Reader, roles: dict[int, str], plan: FramePlan
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Second pass: yield ``(plan row, colour (H, W, 3) uint8, depth (H, W) float32)`` in plan order,
    decoding only planned images and holding only those still waiting for their partner."""
    store = typestore()
    want_color = set(plan.color.tolist())
    depth_uses: dict[int, int] = {}
    for d in plan.depth.tolist():
        depth_uses[d] = depth_uses.get(d, 0) + 1
    colors: dict[int, np.ndarray] = {}
    depths: dict[int, np.ndarray] = {}
    seq = {"color": 0, "depth": 0}
    row = 0
    conns = [c for c in reader.connections if roles.get(c.id) in ("color", "depth")]
    for conn, _, raw in reader.messages(connections=conns):
        role = roles[conn.id]
        i = seq[role]
        seq[role] += 1
        if role == "color" and i in want_color:
            colors[i] = decode_color(store.deserialize_cdr(raw, IMAGE))
        elif role == "depth" and i in depth_uses:
            depths[i] = decode_depth(store.deserialize_cdr(raw, IMAGE))
        else:
            continue
        while row < len(plan.color) and int(plan.color[row]) in colors and int(plan.depth[row]) in depths:
            c, d = int(plan.color[row]), int(plan.depth[row])
            depth = depths[d]
            depth_uses[d] -= 1
            if depth_uses[d] == 0:
                del depths[d]
            yield row, colors.pop(c), depth
            row += 1


def read_bag_frames(
    bag_path: Path,
    topics: dict = BAG_TOPICS,
    every: int = 1,
    tolerance: float = 0.02,
    pose_tolerance: float | None = None,
) -> Iterator[Frame]:
    """Stream RGB-D frames from a bag: every ``every``-th colour image with its nearest depth image.

    Two passes: the first reads header stamps (images are not deserialised) and the small
    pose/camera-info messages and pairs them (:func:`pair_frames`); the second decodes only
    the images used. Frames without depth or pose within tolerance are skipped and counted
    in a log line.

    Depth is assumed registered to colour. If the two resolutions differ, colour is resized to
    the depth resolution and K (from the latest CameraInfo, for its own width/height) is scaled
    to it.

    Args:
        bag_path: bag folder or .mcap file.
        topics: role -> topic (roles color, depth, camera_info, pose).
        every: keep every k-th colour message (Frame.index = colour message number).
        tolerance: max |colour stamp - depth stamp| in seconds.
        pose_tolerance: max |colour stamp - pose stamp| in seconds (default: ``tolerance``).

    Yields:
        Frame(color (H, W, 3) uint8, depth (H, W) float32 m, intrinsics (3, 3), pose (4, 4), stamp s).
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    tol_ns = seconds_to_ns(tolerance)
    pose_tol_ns = seconds_to_ns(tolerance if pose_tolerance is None else pose_tolerance)
    with Reader(bag_path) as reader:
        roles = _connections(reader, topics, ("color", "depth", "camera_info", "pose"))
        index = _index_bag(reader, roles)
        if not index.infos:
            raise ValueError(f"{bag_path}: topic {topics['camera_info']!r} has no messages")
        plan, dropped = pair_frames(index.stamps, every, tol_ns, pose_tol_ns)
        if dropped["no_depth"] or dropped["no_pose"]:
            log.info("%s: skipped %d frames without depth within %.0f ms and %d without pose",
                     bag_path, dropped["no_depth"], tolerance * 1e3, dropped["no_pose"])
        warned = False
        for row, color, depth in _planned_images(reader, roles, plan):
            c = int(plan.color[row])
            k, info_hw = index.infos[int(plan.info[row])]
            if info_hw[0] <= 0 or info_hw[1] <= 0:  # CameraInfo without a size: it describes the colour image
                info_hw = color.shape[:2]
            if color.shape[:2] != depth.shape:
                if not warned:
                    log.warning("%s: colour %s and depth %s differ; resizing colour to depth",
                                bag_path, color.shape[:2], depth.shape)
                    warned = True
                color = cv2.resize(color, depth.shape[::-1], interpolation=cv2.INTER_AREA)
            yield Frame(index=c, color=color, depth=depth, intrinsics=_scale_intrinsics(k, info_hw, depth.shape),
                        pose=index.poses[int(plan.pose[row])].copy(), stamp=int(index.stamps["color"][c]) / 1e9)


def read_bag_clouds(
    bag_path: Path, topic: str = BAG_TOPICS["cloud"]
) -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
    """Stream ``(stamp s, xyz (N, 3) float32, rgb (N, 3) uint8)`` from a PointCloud2 topic (NaN points dropped)."""
    store = typestore()
    with Reader(bag_path) as reader:
        roles = _connections(reader, {"cloud": topic}, ("cloud",))
        conns = [c for c in reader.connections if c.id in roles]
        for conn, _, raw in reader.messages(connections=conns):
            msg = store.deserialize_cdr(raw, CLOUD)
            xyz, rgb = pointcloud2_to_arrays(msg.fields, msg.point_step, msg.data, bool(msg.is_bigendian),
                                             width=msg.width, height=msg.height, row_step=msg.row_step)
            yield stamp_ns(msg.header) / 1e9, xyz, rgb
