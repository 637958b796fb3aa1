"""Ground truth for the live-map benchmarks: synthetic walk-throughs whose fused map grows cloud by cloud.

A walk-through is a held-out synthetic scene (``training.data.synthetic``; never trained on when the
seed differs from the training seeds) whose fused map is published every ``every`` frames. Every
cloud's points are mesh vertices, so each point carries its GT instance and ScanNet200 label.

The measures of issue "live object map" (identity, AP50 against per-cloud mode, query precision) are
pure functions here; ``bench/bench_live_map.py`` runs them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from training.data import scannet200
from training.data.synthetic import SynthConfig, generate_scene, scene_name, scene_seed
from training.evaluate.instance_ap import DEFAULT_MIN_REGION_SIZE, GTScene, PredScene, evaluate

MATCH_IOU = 0.5


@dataclass
class GTCloud:
    """One fused cloud with its ground truth: xyz (N, 3) float32, rgb (N, 3) uint8, instance (N,) int64
    GT instance id (0 none), label (N,) int64 ScanNet200 id (0 none), stamp seconds."""

    xyz: np.ndarray
    rgb: np.ndarray
    instance: np.ndarray
    label: np.ndarray
    stamp: float

    def gt_scene(self, scene_id: str) -> GTScene:
        return GTScene.from_labels(scene_id, self.label, self.instance)

    def objects(self, evaluated: set[int], min_points: int = DEFAULT_MIN_REGION_SIZE) -> dict[int, np.ndarray]:
        """GT instance id -> point indices, for objects of evaluated classes with at least ``min_points``."""
        out = {}
        order = np.argsort(self.instance, kind="stable")
        ids, starts = np.unique(self.instance[order], return_index=True)
        bounds = np.append(starts, order.size)
        for k, gid in enumerate(ids):
            pts = order[bounds[k]:bounds[k + 1]]
            if gid > 0 and pts.size >= min_points and int(self.label[pts[0]]) in evaluated:
                out[int(gid)] = pts
        return out


def walkthrough(index: int, seed: int, frames: int, every: int) -> tuple[str, list[GTCloud]]:
    """Scene ``index`` of run ``seed``: its id and the fused clouds with per-point ground truth."""
    sid = scene_name(index)
    config = SynthConfig(num_frames=frames, cloud_every=every)
    mesh, _, clouds = generate_scene(scene_seed(seed, index), sid, frames, config)
    tree = cKDTree(mesh.vertices)
    out = []
    for stamp, xyz, rgb in clouds:
        _, vid = tree.query(xyz, k=1)           # cloud points are mesh vertices (distance 0)
        out.append(GTCloud(xyz.astype(np.float32), rgb, mesh.instance_ids[vid].astype(np.int64),
                           mesh.semantic_ids[vid].astype(np.int64), float(stamp)))
    return sid, out


def point_sets(point_rows: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """Per map row in ``rows``, the point indices assigned to it by ``point_rows`` (N,)."""
    return [np.flatnonzero(point_rows == r) for r in rows]


def best_matches(gt: dict[int, np.ndarray], pred: list[np.ndarray], n: int) -> dict[int, tuple[int, float]]:
    """GT id -> (index into ``pred``, IoU) of its best-overlapping prediction (index -1 when none)."""
    if not pred:
        return {g: (-1, 0.0) for g in gt}
    gt_of = np.zeros(n, np.int64)
    for k, (g, pts) in enumerate(gt.items()):
        gt_of[pts] = k + 1
    out = {}
    sizes_p = np.array([p.size for p in pred])
    inter = np.zeros((len(gt) + 1, len(pred)), np.int64)
    for j, p in enumerate(pred):
        inter[:, j] = np.bincount(gt_of[p], minlength=len(gt) + 1)
    for k, (g, pts) in enumerate(gt.items()):
        iou = inter[k + 1] / np.maximum(pts.size + sizes_p - inter[k + 1], 1)
        j = int(np.argmax(iou))
        out[g] = (j, float(iou[j]))
    return out


def identity_stats(history: dict[int, list[int]]) -> dict:
    """From GT id -> map ids it carried (one per cloud where it was matched): mean share of its most
    common id (issue target >= 0.9), id switches per object, and objects counted."""
    shares, switches = [], []
    for ids in history.values():
        if not ids:
            continue
        shares.append(Counter(ids).most_common(1)[0][1] / len(ids))
        switches.append(sum(a != b for a, b in zip(ids, ids[1:])))
    return {"objects": len(shares), "id_consistency": float(np.mean(shares)) if shares else float("nan"),
            "id_switches_per_object": float(np.mean(switches)) if switches else float("nan")}


def ap50(scene_id: str, cloud: GTCloud, masks: np.ndarray, label_ids: np.ndarray, scores: np.ndarray) -> float:
    """ScanNet200 AP50 (all classes with GT in this cloud) of predictions over the cloud's points."""
    pred = PredScene(scene_id, masks, label_ids, scores)
    return float(evaluate([cloud.gt_scene(scene_id)], [pred]).mean["ap50"])


def masks_from_rows(point_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(M, N) bool masks of map ``rows`` from the per-point map row (N,)."""
    return point_rows[None, :] == np.asarray(rows)[:, None]


def evaluated_classes(vocab_ids: np.ndarray) -> set[int]:
    """ScanNet200 ids scored: in the vocabulary and not ignored (wall, floor)."""
    ignored = {scannet200.name_to_id()[n] for n in ("wall", "floor")}
    return {int(i) for i in vocab_ids} - ignored
