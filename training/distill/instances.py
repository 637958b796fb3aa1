"""The distillation instances of teacher-cache scenes: pooled Mask3D features (the student's input, Eq. 7),
the teacher's pseudo-labels and targets (Eq. 8-10) and, where known, the GT label."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.data import scannet200
from training.distill.features import FeatureCache
from training.teacher.cache import load_teacher_cache
from training.teacher.pseudo_labels import pseudo_labels

log = logging.getLogger(__name__)


@dataclass
class InstanceSet:
    """The distillation instances of a set of scenes, rows aligned.

    features: (I, D) float32 pooled point features (the student's input, Eq. 7).
    targets: (I, C) float32 unit-norm teacher targets (Eq. 10).
    labels: (I,) int64 pseudo-labels in [0, K) (Eq. 9).
    gt: (I,) int64 vocabulary index of the GT label, -1 where unknown or not in the vocabulary.
    scene: (I,) int64 index into ``scene_ids``.
    stats: counts (scenes, proposals, instances, skipped_no_views, skipped_no_points, ...).
    """

    features: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    gt: torch.Tensor
    scene: torch.Tensor
    scene_ids: list[str]
    stats: dict

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> "InstanceSet":
        return InstanceSet(self.features.to(device), self.targets.to(device), self.labels.to(device),
                           self.gt.to(device), self.scene.to(device), self.scene_ids, self.stats)


def gt_lookup(vocab: tuple[str, ...]) -> np.ndarray:
    """Table from ScanNet200 label id to vocabulary index (-1: not in the vocabulary)."""
    ids = scannet200.class_ids()
    lut = np.full(max(ids) + 1, -1, np.int64)
    table = scannet200.name_to_id()
    for i, name in enumerate(vocab):
        if name in table:
            lut[table[name]] = i
    return lut


def load_instances(paths: list[Path], text: torch.Tensor, vocab: tuple[str, ...], features: FeatureCache,
                   min_views: int = 1, compute: bool = True, clip_id: str | None = None,
                   progress: bool = True, desc: str = "scenes") -> InstanceSet:
    """Pseudo-labelled instances of the teacher-cache files ``paths`` (Eq. 8-10 per scene).

    Args:
        paths: teacher-cache files.
        text: (K, C) text embeddings of ``vocab``.
        features: where the pooled features come from (computed when missing if ``compute``).
        min_views: usable views an instance needs (:func:`pseudo_labels`).
        clip_id: identity of the CLIP that made ``text``; scenes whose teacher used another are logged.

    Raises:
        ValueError: a cache whose embedding size differs from the text embeddings'.
    """
    text = text.detach().float().cpu()
    lut = gt_lookup(vocab)
    rows: dict[str, list] = {k: [] for k in ("features", "targets", "labels", "gt", "scene")}
    stats = {"scenes": 0, "proposals": 0, "instances": 0, "skipped_no_views": 0, "skipped_no_points": 0,
             "unusable_views": 0, "features_computed": 0, "features_reused": 0, "gt_instances": 0}
    scene_ids, other_clip, agreement = [], [], []
    for si, path in enumerate(tqdm(paths, desc=desc, unit="scene", disable=not progress)):
        cache = load_teacher_cache(path)
        if cache.view_embeddings.shape[1] != text.shape[1]:
            raise ValueError(f"{path}: teacher embeddings are {cache.view_embeddings.shape[1]}-d but the CLIP "
                             f"text embeddings are {text.shape[1]}-d: the cache was built with another CLIP")
        if clip_id is not None and cache.meta.get("config", {}).get("clip") not in (None, clip_id):
            other_clip.append(cache.scene_id)
        feats, status = features.get(cache, path, compute=compute)
        stats[f"features_{status}"] += 1
        pl = pseudo_labels(torch.from_numpy(cache.view_embeddings), torch.from_numpy(cache.view_instance), text,
                           cache.num_instances, min_views=min_views)
        inst = pl.instances.numpy()
        ok = feats.has_points[inst]
        keep = inst[ok]
        label_ids = np.asarray(cache.proposal_label_ids, np.int64)[keep]
        in_range = (label_ids >= 0) & (label_ids < len(lut))
        gt = np.where(in_range, lut[np.clip(label_ids, 0, len(lut) - 1)], -1)
        rows["features"].append(torch.from_numpy(np.asarray(feats.pooled[keep], np.float32)))
        rows["targets"].append(pl.targets[torch.from_numpy(ok)].float())
        rows["labels"].append(pl.labels[torch.from_numpy(ok)])
        rows["gt"].append(torch.from_numpy(gt))
        rows["scene"].append(torch.full((len(keep),), si, dtype=torch.long))
        agreement.append(pl.agreement[torch.from_numpy(ok)])
        scene_ids.append(cache.scene_id)
        stats["scenes"] += 1
        stats["proposals"] += cache.num_instances
        stats["instances"] += len(keep)
        stats["skipped_no_views"] += pl.num_skipped
        stats["skipped_no_points"] += int((~ok).sum())
        stats["unusable_views"] += pl.num_unusable_views
        stats["gt_instances"] += int((gt >= 0).sum())
    if other_clip:
        log.warning("%d scenes' teacher caches were built with another CLIP than the text embeddings "
                    "(e.g. %s): pseudo-labels compare embeddings of two models", len(other_clip), other_clip[0])
    dims = {r.shape[1] for r in rows["features"]}
    if len(dims) > 1:
        raise ValueError(f"feature files of different widths {sorted(dims)}")
    cat = {k: torch.cat(v) for k, v in rows.items()}
    stats["mean_view_agreement"] = float(torch.cat(agreement).mean()) if stats["instances"] else None
    return InstanceSet(scene_ids=scene_ids, stats=stats, **cat)
