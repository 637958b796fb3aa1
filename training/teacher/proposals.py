"""The instances the teacher embeds: GT instances, Mask3D's class-agnostic proposals, or GT carried over
from a scene's mesh onto another cloud of it (a bag's fused cloud)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from training.data import scannet200

STRUCTURE_LABELS = ("wall", "floor", "ceiling")  # room shell: not GT proposals unless asked


@dataclass
class SceneProposals:
    """Proposals over a scene's N points.

    masks (M, N) bool; scores (M,) float32; label_ids (M,) int64 ScanNet200 id (-1 unknown);
    gt_instance (M,) int64 GT instance id (-1 for Mask3D proposals); labels: M names ("" unknown).
    """

    masks: np.ndarray
    scores: np.ndarray
    label_ids: np.ndarray
    gt_instance: np.ndarray
    labels: list[str]


def gt_proposals(instance_ids: np.ndarray, instance_labels: dict[int, str],
                 skip_labels: tuple[str, ...] = STRUCTURE_LABELS) -> SceneProposals:
    """One proposal per GT instance id present in ``instance_ids`` (N,) (1-based, 0 = none),
    ascending, except those labelled in ``skip_labels``; score 1."""
    ids = np.unique(np.asarray(instance_ids, dtype=np.int64))
    ids = np.asarray([i for i in ids[ids > 0] if instance_labels.get(int(i), "") not in skip_labels], np.int64)
    masks = np.asarray(instance_ids)[None, :] == ids[:, None]
    names = [instance_labels.get(int(i), "") for i in ids]
    name_to_id = scannet200.name_to_id()
    return SceneProposals(masks, np.ones(len(ids), np.float32),
                          np.asarray([name_to_id.get(n, -1) for n in names], np.int64), ids, names)


def mask3d_proposals(model, points: np.ndarray, colors: np.ndarray) -> SceneProposals:
    """Class-agnostic Mask3D proposals (``Mask3D.predict``) over the points."""
    pred = model.predict(points, colors)
    masks = pred.masks.cpu().numpy().astype(bool)
    m = masks.shape[0]
    return SceneProposals(masks, pred.scores.float().cpu().numpy(), np.full(m, -1, np.int64),
                          np.full(m, -1, np.int64), [""] * m)


def transfer_instances(mesh_vertices: np.ndarray, mesh_instances: np.ndarray, points: np.ndarray,
                       max_distance: float) -> np.ndarray:
    """(N,) int64 instance id of each point's nearest mesh vertex (0 beyond ``max_distance`` metres)."""
    dist, idx = cKDTree(np.asarray(mesh_vertices, np.float64)).query(np.asarray(points, np.float64),
                                                                     distance_upper_bound=max_distance)
    found = np.isfinite(dist)
    out = np.zeros(len(points), np.int64)
    out[found] = np.asarray(mesh_instances, np.int64)[idx[found]]
    return out
