"""The three output messages of one cloud in per_cloud mode (instances, markers, labeled cloud).

Pure functions over the Segmenter's :class:`Instances`: tested without spinning.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from folk_ros_interfaces.msg import InstanceArray
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from folk_ros.core import torch_threads
from folk_ros.core.geometry import grouped_oriented_boxes
from folk_ros.core.pointcloud2 import CloudConversion
from folk_ros.core.segmenter import Instances, mask_geometry
from folk_ros.core.voxel_masks import VoxelMasks, split_groups
from folk_ros.ros import parameters as params
from folk_ros.ros.conversions import cloud_to_msg, instances_to_msg, label_colors, packed_label_colors
from folk_ros.ros.markers import markers_from_instances


@dataclass(frozen=True)
class InstancePoints:
    """Each instance's points among the K kept input points, and their geometry.

    Attributes:
        points: (T,) int64 indices into the kept points, instance 0's first, each instance's ascending;
            sizes: (M,) int64 how many are each instance's (:meth:`VoxelMasks.point_groups`).
        centroids, boxes_min, boxes_max: (M, 3) float64 mean and axis-aligned box of each instance's
            kept points.
    """

    points: np.ndarray
    sizes: np.ndarray
    centroids: np.ndarray
    boxes_min: np.ndarray
    boxes_max: np.ndarray

    @property
    def point_ids(self) -> list[np.ndarray]:
        """M arrays of (K_i,) indices into the kept points, one per instance."""
        return split_groups(self.points, self.sizes)


def voxel_of_kept_points(instances: Instances, inverse: np.ndarray | None) -> np.ndarray:
    """(K,) the voxel of each kept input point: through ``inverse`` (K,), the segmented point that stands
    for it (None: K = N, the cloud was not downsampled)."""
    return instances.inverse_map if inverse is None else instances.inverse_map[inverse]


def instance_points(instances: Instances, inverse: np.ndarray | None, xyz: np.ndarray) -> InstancePoints:
    """The instances of the N segmented points mapped back to the K kept input points ``xyz`` (K, 3) through
    ``inverse`` (:func:`voxel_of_kept_points`). The masks stay sparse: each kept point reads its voxel's mask
    bits (no (M, K) array)."""
    to_voxel = torch.from_numpy(voxel_of_kept_points(instances, inverse))
    points, sizes = instances.voxel_masks.point_groups(to_voxel)
    if inverse is None:   # the same points: the Segmenter's geometry
        centroids, boxes = instances.centroids, instances.boxes
    else:                 # every kept point of an instance, also those its voxel's point stands for
        boxes, centroids = (t.numpy() for t in mask_geometry(torch.from_numpy(np.asarray(xyz)),
                                                             instances.voxel_masks, to_voxel))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 2, 3)
    return InstancePoints(points=points, sizes=sizes, centroids=np.asarray(centroids, np.float64).reshape(-1, 3),
                          boxes_min=boxes[:, 0], boxes_max=boxes[:, 1])


def voxel_labels(masks: VoxelMasks, label_indices: np.ndarray, scores: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-voxel instance id, label index and score for the ``labeled_cloud`` extra fields (a point takes
    its voxel's).

    Where masks overlap, the higher-scoring instance wins (of equal scores the later); voxels in no mask
    get -1, -1, 0.

    Args:
        masks: M masks over V voxels; label_indices: (M,) int (-1: no label); scores: (M,) float.

    Returns:
        instance_id (V,) int32, label_index (V,) int32, score (V,) float32.
    """
    label_indices, scores = np.asarray(label_indices), np.asarray(scores, np.float32)
    m = len(masks)
    if label_indices.shape != (m,) or scores.shape != (m,):
        raise ValueError(f"{m} masks need (M,) label_indices and scores, got {label_indices.shape}, {scores.shape}")
    priority = np.empty(m, np.int64)
    priority[np.argsort(scores, kind="stable")] = np.arange(m)
    instance_id = masks.winners(torch.from_numpy(priority)).numpy().astype(np.int32)
    # a sentinel row at the end: instance_id -1 picks it (also when there are no instances at all)
    label = np.append(label_indices.astype(np.int32), np.int32(-1))[instance_id]
    score = np.append(scores, np.float32(0))[instance_id]
    return instance_id, label, score


@dataclass
class Outputs:
    instances: InstanceArray
    markers: MarkerArray
    labeled_cloud: PointCloud2 | None


def build_outputs(header: Header, conv: CloudConversion, n_input: int, instances: Instances,
                  inverse: np.ndarray | None, settings: params.NodeSettings,
                  helper: Executor | None = None) -> Outputs:
    """The three output messages of one cloud, all in ``header``'s frame and stamp.

    ``n_input`` is the message's point count (width * height); ``conv.indices`` maps the K kept
    points to it, so instance point indices and labeled-cloud points are in input row-major order;
    ``inverse`` maps them to the segmented points (:func:`instance_points`).

    With a ``helper`` (one long-lived thread: the node's worker owns one), the labeled cloud is made there
    while this thread finds the instances' points and boxes. Both are mostly numpy loops, which run without
    the GIL, so they overlap: on 2 cores the messages took 17.0-18.1 ms against 18.2-19.5 ms one after the
    other at 100k points, 28-29 ms against 32-35 ms on a held-out synthetic room (a thread made per cloud
    gained nothing).
    """
    args = (header, conv, n_input, instances, inverse)
    labeled = (helper.submit(torch_threads.serially, labeled_cloud_of, *args)
               if helper is not None and settings.publish_labeled_cloud else None)
    xyz, origin = conv.cloud.xyz, conv.origin   # geometry in the cloud's recentred frame, published in the input's
    found = instance_points(instances, inverse, xyz)
    centroids, bmin, bmax = (a + origin for a in (found.centroids, found.boxes_min, found.boxes_max))
    obb = grouped_oriented_boxes(np.take(xyz, found.points, axis=0), found.sizes).shifted(origin)   # 3x xyz[...]
    msg_ids = split_groups(conv.indices[found.points], found.sizes)
    inst_msg = instances_to_msg(header, instances.vocabulary, msg_ids, instances.label_indices,
                                instances.scores, centroids, bmin, bmax, obb=obb)
    colors = label_colors(instances.label_indices)
    point_sets = [xyz[ids] + origin for ids in found.point_ids] if settings.marker_points else None
    markers = markers_from_instances(header, instances.labels, instances.scores, bmin, bmax, colors,
                                     lifetime_s=settings.marker_lifetime, point_sets=point_sets, obb=obb)
    labeled_cloud = None
    if settings.publish_labeled_cloud:
        labeled_cloud = labeled.result() if labeled is not None else labeled_cloud_of(*args)
    return Outputs(instances=inst_msg, markers=markers, labeled_cloud=labeled_cloud)


def labeled_cloud_of(header: Header, conv: CloudConversion, n_input: int, instances: Instances,
                     inverse: np.ndarray | None) -> PointCloud2:
    """``labeled_cloud`` of one cloud: each kept point takes its voxel's labels (:func:`voxel_labels`,
    through :func:`voxel_of_kept_points`)."""
    by_voxel = voxel_labels(instances.voxel_masks, instances.label_indices, instances.scores)
    to_voxel = voxel_of_kept_points(instances, inverse)
    return labeled_cloud_msg(header, conv, n_input, *(values[to_voxel] for values in by_voxel))


def labeled_cloud_msg(header: Header, conv: CloudConversion, n_input: int, instance_id: np.ndarray,
                      label_index: np.ndarray, score: np.ndarray) -> PointCloud2:
    """``labeled_cloud``: every input point (row-major; dropped points are NaN) with x, y, z, rgb by label,
    and the (K,) per-kept-point ``instance_id`` (int32, -1 none), ``label_index`` and ``score``. A recentred
    cloud (UTM-like coordinates) gets FLOAT64 x, y, z back in its own frame, so no precision is lost."""
    recentred = bool(conv.origin.any())
    xyz = conv.cloud.xyz + conv.origin if recentred else conv.cloud.xyz
    fields = {"instance_id": np.asarray(instance_id, np.int32), "label_index": np.asarray(label_index, np.int32),
              "score": np.asarray(score, np.float32)}
    if len(conv.indices) != n_input:   # points were dropped: they come back as NaN, unlabeled
        full_xyz = np.full((n_input, 3), np.nan, xyz.dtype)
        full_xyz[conv.indices] = xyz
        xyz = full_xyz
        for name, none in (("instance_id", -1), ("label_index", -1), ("score", 0)):
            full = np.full(n_input, none, fields[name].dtype)
            full[conv.indices] = fields[name]
            fields[name] = full
    return cloud_to_msg(xyz, packed_label_colors(fields["label_index"]), header, fields)
