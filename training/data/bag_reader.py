"""Reading ROS 2 bags (mcap) of RGB-D frames and fused clouds (the format of :mod:`training.data.rosbag_io`).

``read_bag_frames`` pairs colour, depth, camera info and pose messages by header stamp (the nearest of
each within a tolerance, so a real robot's bag, recorded at receive time, reads the same way) and decodes
only the images of paired frames; ``read_bag_clouds`` yields the fused clouds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Reader

from training.data.rosbag_io import (CLOUD, IMAGE, ROLE_TYPES, decode_color, decode_depth, header_stamp_ns,
                                     pointcloud2_to_arrays, pose_to_matrix, seconds_to_ns, stamp_ns, typestore)
from training.data.types import BAG_TOPICS, Frame

log = logging.getLogger(__name__)


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
