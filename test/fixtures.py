"""Shared test doubles: an UNTRAINED model bundle and small synthetic clouds.

The bundle (``training.untrained_bundle``, size "small") holds randomly initialised weights
(Mask3D 'small' preset, the folk-tiny-vit CLIP config, a student) written through the real
bundle format, so every loading path is exercised; its labels mean nothing. Tests that need
meaningful labels use the trained bundle in models/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from folk_ros.core.cloud import PointCloud
from training.untrained_bundle import SMALL_VOCABULARY as VOCABULARY  # noqa: F401 (re-exported to the tests)
from training.untrained_bundle import make_untrained_bundle  # noqa: F401


def box_room_cloud(seed: int = 0, points_per_box: int = 1500) -> tuple[PointCloud, np.ndarray]:
    """A floor with three coloured boxes; returns (cloud, (N,) int instance id, 0 = floor)."""
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(0, 3, (3000, 2)), rng.normal(0, 0.003, 3000)]
    parts, ids, colors = [floor], [np.zeros(3000, int)], [np.full((3000, 3), 0.6)]
    for i, (cx, cy, size, rgb) in enumerate([(0.7, 0.7, 0.5, (0.8, 0.2, 0.2)), (2.2, 0.8, 0.4, (0.2, 0.7, 0.2)),
                                             (1.5, 2.2, 0.6, (0.2, 0.3, 0.9))], start=1):
        u = rng.uniform(-0.5, 0.5, (points_per_box, 3))
        face = rng.integers(0, 3, points_per_box)
        u[np.arange(points_per_box), face] = np.sign(u[np.arange(points_per_box), face]) * 0.5
        box = u * size + [cx, cy, size / 2]
        parts.append(box)
        ids.append(np.full(points_per_box, i))
        colors.append(np.tile(rgb, (points_per_box, 1)))
    return PointCloud.from_arrays(np.concatenate(parts), np.concatenate(colors)), np.concatenate(ids)


def box_room_scene(root: Path, seed: int = 0) -> Path:
    """The fixtures' box room (floor + three boxes) written as a ScanNet-layout scene without frames."""
    from training.data import scannet200
    from training.data.scannet_writer import write_scannet_scene
    from training.data.types import SceneMesh
    cloud, inst = box_room_cloud(seed=seed, points_per_box=1200)
    semantic = np.where(inst > 0, scannet200.label_id("box"), scannet200.label_id("floor"))
    mesh = SceneMesh(scene_id=f"synth{seed:04d}_00", vertices=cloud.xyz.astype(np.float32),
                     colors=np.round(cloud.rgb * 255).astype(np.uint8), faces=np.zeros((0, 3), np.int64),
                     semantic_ids=semantic.astype(np.int64), instance_ids=inst.astype(np.int64),
                     segments=inst.astype(np.int64), instance_labels={i: "box" for i in (1, 2, 3)})
    scene_dir = root / mesh.scene_id
    write_scannet_scene(scene_dir, mesh, frames=[])
    return scene_dir


def segment_yaml_parameters() -> dict:
    """The folk_segmenter parameters config/segment.yaml sets (the file holds that one node)."""
    import yaml

    from folk_ros.ros.parameters import NODE_NAME   # rclpy: imported by the tests that read the file only
    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "config/segment.yaml").read_text())
    assert list(doc) == [NODE_NAME]
    return doc[NODE_NAME]["ros__parameters"]
