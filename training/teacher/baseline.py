"""OpenMask3D-style baseline (Takmaz et al., NeurIPS 2023), for comparison with the FOLK teacher.

Per instance: the top-k (5) frames by visible points, the bounding box of the projected
mask in each at ``levels`` (3) sizes, each level widening the box by ``expansion`` (0.1) of
its size per side (OpenMask3D's ``mask2box_multi_level``), CLIP image embeddings of the
crops; a view's embedding is the normalised mean of its level crops, and the instance is
classified by the mean of its views (:func:`training.teacher.teacher.classify` with
``method="mean"``), which is OpenMask3D's average over all crops.

Differences from OpenMask3D, deliberate: no SAM refinement of the projected mask (no SAM
weights here; the box is that of the projected points); the same visibility test as the
teacher (:class:`~training.teacher.config.TeacherConfig` depth threshold), so both see the
same frames. Inputs and outputs are the teacher's (:class:`~training.teacher.teacher.TeacherResult`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F

from training.data.types import Frame
from training.teacher.config import TeacherConfig
from training.teacher.teacher import (StageTimer, TeacherResult, assemble_views, check_reiterable, chunked,
                                      crop_images, mask_boxes, project_scene, selected_frames, views_by_frame)

BASELINE_STAGES = ("io", "projection", "selection", "crops", "clip")


@dataclass(frozen=True)
class BaselineConfig:
    """OpenMask3D's crop settings (its defaults).

    Attributes:
        top_k: frames per instance, by visible points (OpenMask3D ``top_k``).
        levels: crop levels per view (``multi_level_expansion_ratio`` levels).
        expansion: box widening per level, fraction of the box size per side.
        min_visible_points: frames with fewer visible points are never chosen.
    """

    top_k: int = 5
    levels: int = 3
    expansion: float = 0.1
    min_visible_points: int = 1

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.levels < 1 or self.min_visible_points < 1:
            raise ValueError(f"need top_k, levels, min_visible_points >= 1, got {self.top_k}, {self.levels}, "
                             f"{self.min_visible_points}")
        if self.expansion < 0:
            raise ValueError(f"expansion must be >= 0, got {self.expansion}")


def top_k_views(point_counts: np.ndarray, k: int, min_points: int = 1) -> list[list[int]]:
    """Per instance, the (at most) k frame positions with the most visible points, descending
    (ties by frame order); frames under ``min_points`` are left out. ``point_counts``: (M, F)."""
    counts = np.asarray(point_counts)
    if counts.ndim != 2:
        raise ValueError(f"point_counts must be (M, F), got {counts.shape}")
    order = np.argsort(-counts, axis=1, kind="stable")[:, :k]
    ok = np.take_along_axis(counts, order, axis=1) >= min_points
    return [row[keep].tolist() for row, keep in zip(order, ok)]


class OpenMaskBaseline:
    """Multi-level crop CLIP embeddings per (instance, view); same API as :class:`Teacher`.

    Args:
        clip: a :class:`folk_ros.core.clip.ClipModel` (``encode_images``).
        cfg: the teacher config (only the depth threshold is read: same visibility test).
        baseline: crop settings.
        frame_batch: frames whose crops are embedded in one CLIP call.
    """

    def __init__(self, clip, cfg: TeacherConfig = TeacherConfig(), baseline: BaselineConfig = BaselineConfig(),
                 frame_batch: int = 8):
        if frame_batch < 1:
            raise ValueError(f"frame_batch must be >= 1, got {frame_batch}")
        self.clip = clip
        self.frame_batch = frame_batch
        self.cfg = cfg
        self.baseline = baseline

    def embed(self, points: np.ndarray, masks: np.ndarray, frames: Iterable[Frame]) -> TeacherResult:
        """Per-instance per-view crop embeddings of one scene (see :meth:`Teacher.embed`)."""
        frames = check_reiterable(frames)
        b = self.baseline
        timer = StageTimer(BASELINE_STAGES)
        proj = project_scene(points, masks, frames, self.cfg.depth_threshold, timer)
        with timer("selection"):
            by_frame, ranks = views_by_frame(top_k_views(proj.point_counts, b.top_k, b.min_visible_points))
        per_frame = []
        for chunk in chunked(timer.timed_iter(selected_frames(frames, list(by_frame)), "io"), self.frame_batch):
            crops, views = [], []  # views: (instances (K,), frame position) in crop order
            with timer("crops"):
                for pos, frame in chunk:
                    insts = np.asarray(by_frame[pos], dtype=np.int64)
                    sparse = proj.sparse_masks(pos, insts)
                    for lvl in range(b.levels):  # level-major within a frame: (L, K) crops
                        crops += crop_images(frame.color, mask_boxes(sparse, lvl, b.expansion))
                    views.append((insts, pos))
            with timer("clip"):
                emb = self.clip.encode_images(crops).float().cpu()  # (sum L*K, C), one call per chunk
            start = 0
            for insts, pos in views:
                e = emb[start:start + b.levels * len(insts)].view(b.levels, len(insts), -1)
                start += b.levels * len(insts)
                per_frame.append((insts, F.normalize(e.mean(dim=0), dim=1).numpy(), pos))
        return assemble_views(per_frame, ranks, proj, self.clip.embed_dim, timer.seconds)
