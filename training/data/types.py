"""Plain data types shared by the synthetic generator, the ScanNet-layout reader and the bag reader.

Everything is numpy; nothing here imports ROS, torch or open3d.

Conventions (the same as ScanNet's):
- world coordinates in metres, z up;
- a camera pose is the 4x4 camera-to-world matrix of an OpenCV camera
  (x right, y down, z forward);
- depth images are float32 metres with 0 where there is no measurement;
- ScanNet200 label ids are the benchmark ids of ``../shared/data/scannet200.json``
  (0 = unannotated); instance ids are 1-based per scene (0 = no instance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    """One RGB-D frame, colour and depth registered at the same resolution.

    Attributes:
        index: frame number in the original sequence (e.g. the ``<i>`` of ``color/<i>.jpg``).
        color: (H, W, 3) uint8 RGB.
        depth: (H, W) float32 metres, 0 = no measurement.
        intrinsics: (3, 3) float64 pinhole matrix of ``color``/``depth`` (fx, fy, cx, cy).
        pose: (4, 4) float64 camera-to-world.
        stamp: seconds (bag time for bag frames, ``index / fps`` for folders).
        instance: optional (H, W) int32 per-pixel GT instance id (0 = none); synthetic data only.
    """

    index: int
    color: np.ndarray
    depth: np.ndarray
    intrinsics: np.ndarray
    pose: np.ndarray
    stamp: float = 0.0
    instance: np.ndarray | None = None

    @property
    def height(self) -> int:
        return int(self.depth.shape[0])

    @property
    def width(self) -> int:
        return int(self.depth.shape[1])


@dataclass
class SceneMesh:
    """The reconstructed mesh of a scene with per-vertex ground truth.

    Attributes:
        scene_id: e.g. ``scene0000_00`` or ``synth0003_00``.
        vertices: (N, 3) float32 metres.
        colors: (N, 3) uint8 RGB.
        faces: (F, 3) int64 vertex indices (may be empty).
        semantic_ids: (N,) int64 ScanNet200 label id per vertex (0 = unannotated).
        instance_ids: (N,) int64 instance id per vertex, 1-based (0 = none).
        segments: (N,) int64 over-segmentation id per vertex (ScanNet ``segIndices``).
        instance_labels: instance id -> ScanNet200 label name.
    """

    scene_id: str
    vertices: np.ndarray
    colors: np.ndarray
    faces: np.ndarray
    semantic_ids: np.ndarray
    instance_ids: np.ndarray
    segments: np.ndarray
    instance_labels: dict[int, str] = field(default_factory=dict)

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    def gt_encoding(self) -> np.ndarray:
        """(N,) int64 benchmark GT encoding ``label_id * 1000 + instance_id`` (0 = unannotated)."""
        gt = self.semantic_ids * 1000 + self.instance_ids
        gt[(self.instance_ids == 0) | (self.semantic_ids == 0)] = 0
        return gt.astype(np.int64)


# Topic names of a synthetic recording (and the defaults of the bag reader).
BAG_TOPICS = {
    "color": "/camera/color/image_raw",          # sensor_msgs/Image rgb8
    "depth": "/camera/depth/image_raw",          # sensor_msgs/Image 16UC1 (mm) or 32FC1 (m)
    "camera_info": "/camera/color/camera_info",  # sensor_msgs/CameraInfo
    "pose": "/camera/pose",                      # geometry_msgs/PoseStamped, camera-to-world, frame "map"
    "cloud": "/map/cloud",                       # sensor_msgs/PointCloud2 x,y,z,rgb fused map
}
