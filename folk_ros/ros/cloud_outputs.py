"""The three output messages of one cloud in per_cloud mode (instances, markers, labeled cloud).

Pure functions over the Segmenter's :class:`Instances`: tested without spinning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from folk_ros_interfaces.msg import InstanceArray
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from folk_ros.core.geometry import oriented_boxes
from folk_ros.core.pointcloud2 import CloudConversion
from folk_ros.core.segmenter import Instances, mask_geometry
from folk_ros.core.voxel_masks import VoxelMasks
from folk_ros.ros import parameters as params
from folk_ros.ros.conversions import (cloud_to_msg, instances_to_msg, label_colors, markers_from_instances,
                                      point_labels)


@dataclass(frozen=True)
class PointLabels:
    """Segmenter output mapped back to the K kept input points.

    Attributes:
        point_ids: M arrays of (K_i,) int64 indices into the kept points, one per instance.
        instance_id, label_index: (K,) int32 (-1: none); score: (K,) float32 (0: none); where instances
            overlap the higher score wins (:func:`point_labels`).
        centroids, boxes_min, boxes_max: (M, 3) float64 mean and axis-aligned box of each instance's
            kept points.
    """

    point_ids: list[np.ndarray]
    instance_id: np.ndarray
    label_index: np.ndarray
    score: np.ndarray
    centroids: np.ndarray
    boxes_min: np.ndarray
    boxes_max: np.ndarray


def label_points(instances: Instances, inverse: np.ndarray | None, xyz: np.ndarray) -> PointLabels:
    """Map masks over V segmented points back to the K kept input points ``xyz`` (K, 3) through
    ``inverse`` (K,) (None: V = K, the cloud was not downsampled)."""
    masks = instances.masks
    if inverse is None:   # the same points: the Segmenter's geometry
        ids = [np.flatnonzero(m) for m in masks]
        centroids, boxes = instances.centroids, instances.boxes
    else:                 # every kept point of an instance, also those its voxel's point stands for
        ids = [np.flatnonzero(m[inverse]) for m in masks]  # one (K,) gather per instance, no (M, K) copy
        boxes, centroids = (t.numpy() for t in mask_geometry(
            torch.from_numpy(np.asarray(xyz)), VoxelMasks.from_dense(torch.from_numpy(masks)),
            torch.from_numpy(inverse)))
    iid, lab, score = point_labels(masks, instances.label_indices, instances.scores)
    if inverse is not None:
        iid, lab, score = iid[inverse], lab[inverse], score[inverse]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 2, 3)
    return PointLabels(point_ids=ids, instance_id=iid, label_index=lab, score=score,
                       centroids=np.asarray(centroids, np.float64).reshape(-1, 3), boxes_min=boxes[:, 0],
                       boxes_max=boxes[:, 1])


@dataclass
class Outputs:
    instances: InstanceArray
    markers: MarkerArray
    labeled_cloud: PointCloud2 | None


def build_outputs(header: Header, conv: CloudConversion, n_input: int, instances: Instances,
                  labels: PointLabels, settings: params.NodeSettings) -> Outputs:
    """The three output messages of one cloud, all in ``header``'s frame and stamp.

    ``n_input`` is the message's point count (width * height); ``conv.indices`` maps the K kept
    points to it, so instance point indices and labeled-cloud points are in input row-major order.
    """
    xyz, origin = conv.cloud.xyz, conv.origin   # geometry in the cloud's recentred frame, published in the input's
    centroids, bmin, bmax = (a + origin for a in (labels.centroids, labels.boxes_min, labels.boxes_max))
    obb = oriented_boxes(xyz, labels.point_ids).shifted(origin)
    msg_ids = [conv.indices[ids] for ids in labels.point_ids]
    inst_msg = instances_to_msg(header, instances.vocabulary, msg_ids, instances.label_indices,
                                instances.scores, centroids, bmin, bmax, obb=obb)
    colors = label_colors(instances.label_indices)
    point_sets = [xyz[ids] + origin for ids in labels.point_ids] if settings.marker_points else None
    markers = markers_from_instances(header, instances.labels, instances.scores, bmin, bmax, colors,
                                     lifetime_s=settings.marker_lifetime, point_sets=point_sets, obb=obb)
    labeled = None
    if settings.publish_labeled_cloud:
        labeled = labeled_cloud_msg(header, conv, n_input, labels.instance_id, labels.label_index, labels.score)
    return Outputs(instances=inst_msg, markers=markers, labeled_cloud=labeled)


def labeled_cloud_msg(header: Header, conv: CloudConversion, n_input: int, instance_id: np.ndarray,
                      label_index: np.ndarray, score: np.ndarray) -> PointCloud2:
    """``labeled_cloud``: every input point (row-major; dropped points are NaN) with x, y, z, rgb by label,
    and the (K,) per-kept-point ``instance_id`` (int32, -1 none), ``label_index`` and ``score``. A recentred
    cloud (UTM-like coordinates) gets FLOAT64 x, y, z back in its own frame, so no precision is lost."""
    recentred = bool(conv.origin.any())
    full_xyz = np.full((n_input, 3), np.nan, np.float64 if recentred else np.float32)
    full_xyz[conv.indices] = conv.cloud.xyz + conv.origin if recentred else conv.cloud.xyz
    fields = {"instance_id": np.full(n_input, -1, np.int32), "label_index": np.full(n_input, -1, np.int32),
              "score": np.zeros(n_input, np.float32)}
    for name, values in (("instance_id", instance_id), ("label_index", label_index), ("score", score)):
        fields[name][conv.indices] = values
    return cloud_to_msg(full_xyz, label_colors(fields["label_index"]), header, fields)
