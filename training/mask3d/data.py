"""Class-agnostic Mask3D training samples from ScanNet-layout scenes.

A scene becomes mesh vertices (xyz, colours) with one GT mask per object instance;
wall, floor and unannotated vertices belong to no instance (ScanNet200's instance
benchmark ignores wall and floor). Voxelisation and colour normalisation are the
model's own (``folk_ros.core.mask3d.preprocess``), so training sees exactly what
``Mask3D.predict`` sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from folk_ros.core.mask3d.config import Mask3DConfig
from folk_ros.core.mask3d.preprocess import point_inputs, voxelize
from training.data import scannet, scannet200
from training.mask3d.augment import AugmentConfig, augment_color, augment_geometry

IGNORED_LABELS = ("wall", "floor")


@dataclass
class Scene:
    """One training scene: xyz (N, 3) float32, rgb (N, 3) float32 in [0, 1], instance (N,) int64 (0 = none)."""

    scene_id: str
    xyz: np.ndarray
    rgb: np.ndarray
    instance: np.ndarray


@dataclass
class Sample:
    """Model input and targets at voxel level (V voxels, G instances)."""

    coords: torch.Tensor      # (V, 3) int32 voxel coordinates
    feats: torch.Tensor       # (V, 3) input features: normalised colours, or ones (point_inputs)
    raw_xyz: torch.Tensor     # (V, 3) metres
    masks: torch.Tensor       # (G, V) bool GT masks
    labels: torch.Tensor      # (G,) int64, all 0 (class-agnostic "object")


def load_scene(scene_dir: Path) -> Scene:
    """Mesh vertices and object instances (wall/floor/unannotated -> 0) of a ScanNet-layout scene."""
    mesh = scannet.read_scene_mesh(scene_dir)
    ignored = {scannet200.label_id(n) for n in IGNORED_LABELS}
    instance = mesh.instance_ids.astype(np.int64).copy()
    instance[np.isin(mesh.semantic_ids, list(ignored)) | (mesh.semantic_ids == 0)] = 0
    return Scene(mesh.scene_id, mesh.vertices.astype(np.float32), mesh.colors.astype(np.float32) / 255.0, instance)


def make_sample(scene: Scene, cfg: Mask3DConfig, rng: np.random.Generator | None = None,
                augment: AugmentConfig | None = None, min_voxels: int = 10) -> Sample:
    """Voxelise (after optional augmentation) and build the voxel-level GT masks.

    A voxel takes the instance of its first point (the voxel's representative, as in
    ``Mask3D.predict``). Instances with fewer than ``min_voxels`` voxels are dropped.
    """
    xyz, rgb = scene.xyz, scene.rgb
    if augment is not None:
        if rng is None:
            raise ValueError("augmentation needs a numpy Generator")
        xyz, rgb = augment_geometry(xyz, rng, augment), augment_color(rgb, rng, augment)
    vox = voxelize(xyz, cfg.voxel_size)
    inputs = point_inputs(np.round(rgb * 255.0).astype(np.uint8), cfg)
    inst = scene.instance[vox.unique_map]
    ids, counts = np.unique(inst[inst > 0], return_counts=True)
    ids = ids[counts >= min_voxels]
    masks = torch.from_numpy(inst[None, :] == ids[:, None])
    return Sample(coords=torch.from_numpy(vox.coords), feats=torch.from_numpy(inputs[vox.unique_map]),
                  raw_xyz=torch.from_numpy(xyz[vox.unique_map].astype(np.float32)), masks=masks,
                  labels=torch.zeros(len(ids), dtype=torch.int64))
