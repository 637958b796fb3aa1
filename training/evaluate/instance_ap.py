"""ScanNet(200) 3D instance-segmentation AP, the protocol of ScanNet's ``evaluate_semantic_instance.py``.

A vectorised re-implementation of the benchmark script (ScanNet BenchmarkScripts,
``3d_evaluation/evaluate_semantic_instance.py``, adapted from the CityScapes
evaluation) with the ScanNet200 settings of ``training/data/scannet200.json``
(``instance_eval``). The protocol, step by step:

1. **Ground truth** (per mesh vertex ``label_id * 1000 + instance``, 0 = unannotated):
   every distinct non-zero id whose label is an evaluated class is one GT
   instance. Evaluated classes are the ScanNet200 ids minus ``ignored_labels``
   (wall, floor). Vertices of no evaluated class (unannotated, wall, floor,
   non-benchmark labels) are *void*. GT instances under ``min_region_size``
   (100) vertices are *ignored*: they are neither true positives nor misses.
2. **Predictions** whose label is not an evaluated class, or with fewer than
   ``min_region_size`` vertices, are dropped. A prediction is compared only with
   GT instances of its own label: IoU = |P ∩ G| / (|P| + |G| - |P ∩ G|).
3. **Matching**, per class and IoU threshold t (strict: IoU > t), greedy as in
   the benchmark: GT instances in ascending id order each take the first
   not-yet-taken prediction (predictions in descending confidence, ties in input
   order) with IoU > t, a true positive scored by its confidence. Every further
   untaken prediction with IoU > t to that GT is a duplicate: a false positive.
   A GT with no such prediction is a miss (false negative).
4. **Unmatched predictions** (IoU <= t to every GT of their class, ignored ones
   included) are false positives unless the fraction of their vertices on void
   or on ignored (small) GT of their class exceeds t.
5. **AP** per class and threshold, pooled over scenes: one precision/recall
   point per distinct confidence c (detections with score >= c; recall over all
   non-ignored GT of the class), plus the artificial point (recall 0,
   precision 1); AP is the trapezoidal area under these points in recall order.
   There is no interpolation (no precision envelope) and no extension of the
   curve beyond the highest recall reached. A class with GT but no predictions
   has AP 0; a class with no (non-ignored) GT in any scene has AP NaN and is
   left out of every mean.
6. **Summaries**: per class AP = mean over ``iou_thresholds`` (0.50:0.05:0.90),
   AP50 and AP25 at IoU 0.5 and 0.25; the overall and the head/common/tail
   (ScanNet200 splits) figures are NaN-skipping means over classes.

Differences from the script, all deliberate: predictions are ordered by their
confidence rather than by their line order in the prediction file (identical
results at every threshold >= 0.5, where a prediction can exceed the IoU
threshold with at most one GT; at 0.25 this is the script run on a
confidence-sorted file); the void mask is "label not evaluated" (the fixed form
``not in1d(gt // 1000, valid_ids)`` of later versions of the script); a class
with GT and predictions but no scored detection (all predictions ignored) gets
AP 0 where the script would fail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from training.data import scannet200

_SETTINGS = scannet200.instance_eval_settings()
DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in _SETTINGS["iou_thresholds_ap"])
DEFAULT_MIN_REGION_SIZE: int = int(_SETTINGS["min_region_size_vertices"])
DEFAULT_IGNORED_LABELS: tuple[str, ...] = tuple(_SETTINGS["ignored_labels"])
AP50_THRESHOLD: float = float(_SETTINGS["ap50"])
AP25_THRESHOLD: float = float(_SETTINGS["ap25"])
LABEL_DIVISOR = 1000  # GT encoding: label_id * LABEL_DIVISOR + instance index


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class GTScene:
    """Ground truth of one scene in the benchmark encoding.

    Attributes:
        scene_id: e.g. ``scene0011_00``.
        ids: (N,) int64 per mesh vertex ``label_id * 1000 + instance_index``,
            0 for unannotated vertices.
    """

    scene_id: str
    ids: np.ndarray

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids)
        if ids.ndim != 1:
            raise ValueError(f"GTScene {self.scene_id!r}: ids must be (N,), got shape {ids.shape}")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"GTScene {self.scene_id!r}: ids must be integers, got {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and ids.min() < 0:
            raise ValueError(f"GTScene {self.scene_id!r}: ids must be >= 0, got {ids.min()}")
        object.__setattr__(self, "ids", ids)

    @property
    def num_vertices(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def from_labels(cls, scene_id: str, label_ids: np.ndarray, instance_ids: np.ndarray) -> GTScene:
        """From (N,) per-vertex label ids and (N,) instance indices (0 in either = unannotated)."""
        label_ids = np.asarray(label_ids, dtype=np.int64)
        instance_ids = np.asarray(instance_ids, dtype=np.int64)
        if label_ids.shape != instance_ids.shape:
            raise ValueError(f"label_ids {label_ids.shape} and instance_ids {instance_ids.shape} "
                             "differ in shape")
        if instance_ids.size and instance_ids.max() >= LABEL_DIVISOR:
            raise ValueError(f"instance indices must be < {LABEL_DIVISOR}, got {instance_ids.max()}")
        ids = label_ids * LABEL_DIVISOR + instance_ids
        ids[(label_ids == 0) | (instance_ids == 0)] = 0
        return cls(scene_id, ids)

    @classmethod
    def from_masks(cls, scene_id: str, masks: np.ndarray, label_ids: Sequence[int]) -> GTScene:
        """From (G, N) bool disjoint instance masks and (G,) label ids; instance k gets index k + 1."""
        masks = np.asarray(masks, dtype=bool)
        label_ids = np.asarray(label_ids, dtype=np.int64)
        if masks.ndim != 2 or label_ids.shape != (masks.shape[0],):
            raise ValueError(f"masks must be (G, N) and label_ids (G,), "
                             f"got {masks.shape} and {label_ids.shape}")
        if masks.shape[0] >= LABEL_DIVISOR:
            raise ValueError(f"at most {LABEL_DIVISOR - 1} instances per scene, got {masks.shape[0]}")
        overlap = np.count_nonzero(masks.sum(axis=0) > 1)
        if overlap:
            raise ValueError(f"GT masks must be disjoint; {overlap} vertices lie in several masks")
        codes = label_ids * LABEL_DIVISOR + np.arange(1, masks.shape[0] + 1)
        covered = masks.any(axis=0)
        ids = np.where(covered, codes[masks.argmax(axis=0)] if masks.shape[0] else 0, 0)
        return cls(scene_id, ids)

    @classmethod
    def from_mesh(cls, mesh) -> GTScene:
        """From a :class:`training.data.types.SceneMesh` (its ``gt_encoding()``)."""
        return cls(mesh.scene_id, mesh.gt_encoding())


@dataclass(frozen=True)
class PredScene:
    """Predicted instances of one scene.

    Attributes:
        scene_id: e.g. ``scene0011_00``.
        masks: (M, N) bool, one row per predicted instance over the mesh vertices.
        label_ids: (M,) int64 benchmark label id of each instance.
        scores: (M,) float64 confidence of each instance (finite; higher = surer).
    """

    scene_id: str
    masks: np.ndarray
    label_ids: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        masks = np.asarray(self.masks)
        if masks.ndim != 2:
            raise ValueError(f"PredScene {self.scene_id!r}: masks must be (M, N), got shape {masks.shape}")
        masks = masks if masks.dtype == bool else masks != 0
        label_ids = np.asarray(self.label_ids)
        scores = np.asarray(self.scores, dtype=np.float64)
        m = masks.shape[0]
        if label_ids.shape != (m,) or scores.shape != (m,):
            raise ValueError(
                f"PredScene {self.scene_id!r}: {m} masks need (M,) label_ids and scores, "
                f"got {label_ids.shape} and {scores.shape}")
        if label_ids.size and not np.issubdtype(label_ids.dtype, np.integer):
            raise ValueError(f"PredScene {self.scene_id!r}: label_ids must be integers, "
                             f"got {label_ids.dtype}")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"PredScene {self.scene_id!r}: scores must be finite")
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "label_ids", label_ids.astype(np.int64, copy=False))
        object.__setattr__(self, "scores", scores)

    @property
    def num_predictions(self) -> int:
        return int(self.masks.shape[0])

    @property
    def num_vertices(self) -> int:
        return int(self.masks.shape[1])

    @classmethod
    def empty(cls, scene_id: str, num_vertices: int) -> PredScene:
        """A scene with no predictions."""
        return cls(scene_id, np.zeros((0, num_vertices), bool), np.zeros(0, np.int64), np.zeros(0))

    @classmethod
    def from_indices(cls, scene_id: str, num_vertices: int, indices: Sequence[np.ndarray],
                     label_ids: Sequence[int], scores: Sequence[float]) -> PredScene:
        """From one vertex-index array per instance (e.g. ``np.arange(100, 300)``)."""
        masks = np.zeros((len(indices), num_vertices), bool)
        for row, idx in zip(masks, indices):
            row[np.asarray(idx, dtype=np.int64)] = True
        return cls(scene_id, masks, np.asarray(label_ids, dtype=np.int64),
                   np.asarray(scores, dtype=np.float64))

    @classmethod
    def from_gt(cls, gt: GTScene, score: float = 1.0) -> PredScene:
        """The perfect prediction of ``gt``: one mask per GT instance, all with ``score``."""
        uids = np.unique(gt.ids[gt.ids > 0])
        masks = gt.ids[None, :] == uids[:, None]
        return cls(gt.scene_id, masks, uids // LABEL_DIVISOR, np.full(uids.shape, float(score)))


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class EvalConfig:
    """What is evaluated and how.

    Attributes:
        class_ids: evaluated label ids (ignored labels already removed), benchmark order.
        class_names: names aligned with ``class_ids``.
        min_region_size: GT instances and predictions under this many vertices are ignored [vertices].
        iou_thresholds: thresholds averaged into AP (strict ``IoU > t``).
        ap50, ap25: the thresholds of AP50 and AP25.
        splits: split name -> class names (ScanNet200 head/common/tail by default).
    """

    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    min_region_size: int = DEFAULT_MIN_REGION_SIZE
    iou_thresholds: tuple[float, ...] = DEFAULT_IOU_THRESHOLDS
    ap50: float = AP50_THRESHOLD
    ap25: float = AP25_THRESHOLD
    splits: Mapping[str, tuple[str, ...]] = field(default_factory=scannet200.splits)

    def __post_init__(self) -> None:
        if len(self.class_ids) != len(self.class_names):
            raise ValueError(f"{len(self.class_ids)} class ids but {len(self.class_names)} class names")
        if len(set(self.class_ids)) != len(self.class_ids):
            raise ValueError("class_ids must be unique")
        if any(int(c) <= 0 for c in self.class_ids):
            raise ValueError("class ids must be positive (0 means unannotated)")
        if not self.iou_thresholds:
            raise ValueError("iou_thresholds must not be empty")
        if any(not 0.0 <= t < 1.0 for t in (*self.iou_thresholds, self.ap50, self.ap25)):
            raise ValueError("IoU thresholds must lie in [0, 1)")
        if self.min_region_size < 1:
            raise ValueError(f"min_region_size must be >= 1, got {self.min_region_size}")

    @property
    def thresholds(self) -> tuple[float, ...]:
        """All thresholds matched: ``iou_thresholds`` plus AP50 and AP25, sorted, deduplicated."""
        out: list[float] = []
        for t in sorted((*self.iou_thresholds, self.ap50, self.ap25)):
            if not out or not math.isclose(t, out[-1]):
                out.append(float(t))
        return tuple(out)

    @classmethod
    def make(cls, class_ids: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
             ignored_labels: Sequence[str] = DEFAULT_IGNORED_LABELS,
             min_region_size: int = DEFAULT_MIN_REGION_SIZE,
             iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
             splits: Mapping[str, Sequence[str]] | None = None) -> EvalConfig:
        """Config for a class set (ScanNet200 by default) minus ``ignored_labels``.

        Ignored names that are not in the class set are skipped.

        ``class_names`` defaults to the ScanNet200 names of ``class_ids`` (``str(id)`` for other ids).
        """
        if class_ids is None:
            class_ids = scannet200.class_ids()
            class_names = scannet200.class_labels() if class_names is None else class_names
        class_ids = [int(c) for c in class_ids]
        if class_names is None:
            names = scannet200.id_to_name()
            class_names = [names.get(c, str(c)) for c in class_ids]
        if len(class_names) != len(class_ids):
            raise ValueError(f"{len(class_ids)} class ids but {len(class_names)} class names")
        ignored = set(ignored_labels)
        keep = [(c, n) for c, n in zip(class_ids, class_names) if n not in ignored]
        split_map = scannet200.splits() if splits is None else splits
        return cls(
            class_ids=tuple(c for c, _ in keep),
            class_names=tuple(str(n) for _, n in keep),
            min_region_size=int(min_region_size),
            iou_thresholds=tuple(float(t) for t in iou_thresholds),
            splits={k: tuple(v) for k, v in split_map.items()},
        )


# --------------------------------------------------------------------------- per-scene matching


@dataclass
class ClassMatches:
    """Detections of one class pooled over scenes, for each matched threshold.

    Attributes:
        has_gt: some scene has a non-ignored GT instance of the class.
        has_pred: some scene has a (kept) prediction of the class.
        true: per threshold, a list of (K,) bool arrays (True = true positive).
        score: per threshold, a list of (K,) float64 confidences aligned with ``true``.
        missed: (T,) int64 GT instances left unmatched per threshold (hard false negatives).
    """

    has_gt: bool
    has_pred: bool
    true: list[list[np.ndarray]]
    score: list[list[np.ndarray]]
    missed: np.ndarray

    @classmethod
    def new(cls, num_thresholds: int) -> ClassMatches:
        return cls(False, False, [[] for _ in range(num_thresholds)], [[] for _ in range(num_thresholds)],
                   np.zeros(num_thresholds, np.int64))

    def merge(self, other: ClassMatches) -> None:
        """Pool ``other`` (another scene) into this record."""
        self.has_gt |= other.has_gt
        self.has_pred |= other.has_pred
        for t in range(len(self.true)):
            self.true[t].extend(other.true[t])
            self.score[t].extend(other.score[t])
        self.missed += other.missed


SceneMatches = dict  # class id -> ClassMatches of one scene


def intersections(masks: np.ndarray, columns: np.ndarray, num_columns: int) -> np.ndarray:
    """Vertex counts of each mask in each column: (M, N) bool masks @ (N, K) one-hot -> (M, K) int64.

    ``columns`` is (N,) int in [0, K): the column (GT instance, or the void column) of each vertex,
    so each row of the result sums to the mask's vertex count. Both factors are CSR matrices; the
    mask matrix is built straight from ``flatnonzero`` (row-major, hence already CSR-ordered).
    """
    m, n = masks.shape
    if m == 0 or n == 0:
        return np.zeros((m, num_columns), np.int64)
    flat = np.flatnonzero(masks)
    indptr = np.zeros(m + 1, np.int64)
    np.cumsum(np.bincount(flat // n, minlength=m), out=indptr[1:])
    pred = sp.csr_array((np.ones(flat.size, np.int32), flat % n, indptr), shape=(m, n))
    onehot = sp.csr_array((np.ones(n, np.int32), columns, np.arange(n + 1)), shape=(n, num_columns))
    return (pred @ onehot).toarray().astype(np.int64)


def _greedy_match(above: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The benchmark's greedy assignment for one class and threshold.

    Args:
        above: (P, G) bool, IoU > t; rows in descending confidence, columns in ascending GT id
            (non-ignored GT only).
        scores: (P,) float64 confidences of the rows.
    Returns:
        (true-positive scores, duplicate false-positive scores, number of missed GT).
    """
    taken = np.zeros(above.shape[0], bool)
    tp: list[int] = []
    dup: list[np.ndarray] = []
    missed = 0
    for col in above.T:  # loop over GT instances (tens), never over vertices
        cand = np.flatnonzero(col & ~taken)
        if cand.size == 0:
            missed += 1
            continue
        taken[cand[0]] = True
        tp.append(cand[0])
        dup.append(cand[1:])
    dup_idx = np.concatenate(dup) if dup else np.zeros(0, np.int64)
    return scores[np.asarray(tp, np.int64)], scores[dup_idx], missed


def match_scene(gt: GTScene, pred: PredScene, config: EvalConfig) -> SceneMatches:
    """Match one scene's predictions to its GT at every threshold of ``config.thresholds``.

    Returns {class id: ClassMatches} for the evaluated classes present in GT or predictions.
    """
    n = gt.num_vertices
    if pred.num_predictions and pred.num_vertices != n:
        raise ValueError(f"scene {gt.scene_id}: prediction masks have {pred.num_vertices} vertices, "
                         f"the GT has {n}")
    thresholds = config.thresholds
    class_ids = np.asarray(config.class_ids, np.int64)

    # GT instances: distinct ids of evaluated labels, ascending; everything else is void (last column).
    labels = gt.ids // LABEL_DIVISOR
    evaluated = np.isin(labels, class_ids) & (gt.ids > 0)
    gt_uids, inverse = np.unique(gt.ids[evaluated], return_inverse=True)
    void = gt_uids.size
    columns = np.full(n, void, np.int64)
    columns[evaluated] = inverse
    gt_sizes = np.bincount(columns, minlength=void + 1)[:void]
    gt_labels = gt_uids // LABEL_DIVISOR

    # Predictions: evaluated labels with >= min_region_size vertices, descending confidence (stable).
    inter_all = intersections(pred.masks, columns, void + 1)  # (M, G + 1): GT columns, then void
    sizes = inter_all.sum(axis=1)
    keep = np.isin(pred.label_ids, class_ids) & (sizes >= config.min_region_size)
    order = np.lexsort((np.arange(pred.num_predictions), -pred.scores))
    order = order[keep[order]]
    p_labels, p_scores, p_sizes = pred.label_ids[order], pred.scores[order], sizes[order]
    inter = inter_all[order]

    out: SceneMatches = {}
    for cid in np.union1d(gt_labels, p_labels):
        g = np.flatnonzero(gt_labels == cid)
        p = np.flatnonzero(p_labels == cid)
        rec = ClassMatches.new(len(thresholds))
        valid = gt_sizes[g] >= config.min_region_size  # (Gc,) non-ignored GT
        rec.has_gt = bool(valid.any())
        rec.has_pred = bool(p.size)
        inter_c = inter[np.ix_(p, g)]  # (Pc, Gc)
        iou = inter_c / (p_sizes[p, None] + gt_sizes[None, g] - inter_c)
        ignored = (inter[p, void] + inter_c[:, ~valid].sum(axis=1)) / np.maximum(p_sizes[p], 1)
        scores = p_scores[p]
        for t, th in enumerate(thresholds):
            above = iou > th
            tp, dup, missed = _greedy_match(above[:, valid], scores)
            lone_fp = ~above.any(axis=1) & (ignored <= th)
            fp = np.concatenate([dup, scores[lone_fp]])
            rec.true[t].append(np.r_[np.ones(tp.size, bool), np.zeros(fp.size, bool)])
            rec.score[t].append(np.r_[tp, fp])
            rec.missed[t] = missed
        out[int(cid)] = rec
    return out


# --------------------------------------------------------------------------- AP


def average_precision(true: np.ndarray, score: np.ndarray, missed: int) -> float:
    """Area under the benchmark's precision/recall points (trapezoids, no interpolation).

    Args:
        true: (K,) bool, detection is a true positive.
        score: (K,) float confidences.
        missed: GT instances without a detection (recall denominator = true.sum() + missed).
    Returns:
        AP in [0, 1]; 0 when there is no detection.
    """
    true = np.asarray(true, bool)
    score = np.asarray(score, np.float64)
    if true.size == 0:
        return 0.0
    order = np.argsort(-score, kind="stable")
    s, hit = score[order], true[order]
    tp = np.cumsum(hit)
    count = np.arange(1, s.size + 1)
    last = np.r_[s[1:] != s[:-1], True]  # one point per distinct confidence: all detections >= it
    num_gt = int(hit.sum()) + int(missed)
    recall = np.r_[0.0, tp[last] / max(num_gt, 1)]
    precision = np.r_[1.0, tp[last] / count[last]]
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2.0))


# --------------------------------------------------------------------------- results


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _fmt(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def _row(name: str, v: Mapping[str, float], digits: int) -> str:
    return f"| {name} | {_fmt(v['ap'], digits)} | {_fmt(v['ap50'], digits)} | {_fmt(v['ap25'], digits)} |"


def _json_num(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class EvalResult:
    """AP figures of an evaluation.

    Attributes:
        class_ids, class_names: the evaluated classes (C,).
        thresholds: (T,) IoU thresholds matched (``EvalConfig.thresholds``).
        ap_per_threshold: (C, T) float64, NaN for classes absent from the GT.
        ap, ap50, ap25: (C,) float64 per class (AP = mean over ``iou_thresholds``).
        mean: {"ap", "ap50", "ap25"}: NaN-skipping means over classes.
        split_means: split -> {"ap", "ap50", "ap25"} over the classes of that split.
        num_scenes: scenes evaluated.
    """

    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    thresholds: tuple[float, ...]
    ap_per_threshold: np.ndarray
    ap: np.ndarray
    ap50: np.ndarray
    ap25: np.ndarray
    mean: dict[str, float]
    split_means: dict[str, dict[str, float]]
    num_scenes: int

    def per_class(self, include_absent: bool = False) -> dict[str, dict[str, float]]:
        """{class name: {"id", "ap", "ap50", "ap25"}}; classes absent from GT only if asked."""
        return {
            name: {"id": cid, "ap": float(a), "ap50": float(a50), "ap25": float(a25)}
            for cid, name, a, a50, a25 in zip(self.class_ids, self.class_names, self.ap, self.ap50, self.ap25)
            if include_absent or not math.isnan(a)
        }

    def to_markdown(self, include_absent: bool = False, digits: int = 3) -> str:
        """A table: one row per class (present in GT unless ``include_absent``), the mean, the splits."""
        rows = ["| class | AP | AP50 | AP25 |", "|---|---:|---:|---:|"]
        for name, v in self.per_class(include_absent).items():
            rows.append(_row(name, v, digits))
        m = self.mean
        rows.append(f"| **mean** | **{_fmt(m['ap'], digits)}** | **{_fmt(m['ap50'], digits)}** "
                    f"| **{_fmt(m['ap25'], digits)}** |")
        for split, v in self.split_means.items():
            rows.append(_row(f"_{split}_", v, digits))
        return "\n".join(rows) + "\n"

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN as None)."""
        return {
            "num_scenes": self.num_scenes,
            "iou_thresholds": list(self.thresholds),
            "mean": {k: _json_num(v) for k, v in self.mean.items()},
            "splits": {s: {k: _json_num(v) for k, v in d.items()} for s, d in self.split_means.items()},
            "classes": {
                name: {"id": int(cid), "ap": _json_num(a), "ap50": _json_num(a50), "ap25": _json_num(a25),
                       "ap_per_threshold": [_json_num(x) for x in row]}
                for cid, name, a, a50, a25, row in zip(self.class_ids, self.class_names, self.ap, self.ap50,
                                                       self.ap25, self.ap_per_threshold)
            },
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def summarize(scene_matches: Iterable[SceneMatches], config: EvalConfig) -> EvalResult:
    """Pool per-scene matches (from :func:`match_scene`) into AP figures."""
    thresholds = config.thresholds
    pooled: dict[int, ClassMatches] = {}
    num_scenes = 0
    for matches in scene_matches:
        num_scenes += 1
        for cid, rec in matches.items():
            pooled.setdefault(cid, ClassMatches.new(len(thresholds))).merge(rec)

    ap = np.full((len(config.class_ids), len(thresholds)), np.nan)
    for c, cid in enumerate(config.class_ids):
        rec = pooled.get(cid)
        if rec is None or not rec.has_gt:
            continue  # absent from GT: NaN, left out of the means
        if not rec.has_pred:
            ap[c] = 0.0
            continue
        for t in range(len(thresholds)):
            true = np.concatenate(rec.true[t]) if rec.true[t] else np.zeros(0, bool)
            score = np.concatenate(rec.score[t]) if rec.score[t] else np.zeros(0)
            ap[c, t] = average_precision(true, score, int(rec.missed[t]))

    def col(th: float) -> int:
        return next(i for i, t in enumerate(thresholds) if math.isclose(t, th))

    ap_avg = ap[:, [col(t) for t in config.iou_thresholds]].mean(axis=1)
    ap50, ap25 = ap[:, col(config.ap50)], ap[:, col(config.ap25)]
    figures = {"ap": ap_avg, "ap50": ap50, "ap25": ap25}
    names = np.asarray(config.class_names, dtype=object)
    split_means = {
        split: {k: _nanmean(v[np.isin(names, list(members))]) for k, v in figures.items()}
        for split, members in config.splits.items()
    }
    return EvalResult(
        class_ids=tuple(config.class_ids), class_names=tuple(config.class_names), thresholds=thresholds,
        ap_per_threshold=ap, ap=ap_avg, ap50=ap50, ap25=ap25,
        mean={k: _nanmean(v) for k, v in figures.items()}, split_means=split_means, num_scenes=num_scenes,
    )


def pair_scenes(gt_scenes: Iterable[GTScene],
                pred_scenes: Iterable[PredScene]) -> list[tuple[GTScene, PredScene]]:
    """Pair GT and predictions by ``scene_id``; ValueError on duplicates, a missing or an extra prediction."""
    gts = list(gt_scenes)
    preds: dict[str, PredScene] = {}
    for p in pred_scenes:
        if p.scene_id in preds:
            raise ValueError(f"two predictions for scene {p.scene_id!r}")
        preds[p.scene_id] = p
    seen: set[str] = set()
    for g in gts:
        if g.scene_id in seen:
            raise ValueError(f"two ground truths for scene {g.scene_id!r}")
        seen.add(g.scene_id)
    missing = [g.scene_id for g in gts if g.scene_id not in preds]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} scene(s): {', '.join(missing[:5])}")
    extra = sorted(set(preds) - seen)
    if extra:
        raise ValueError(f"predictions for scene(s) without ground truth: {', '.join(extra[:5])}")
    return [(g, preds[g.scene_id]) for g in gts]


def evaluate(gt_scenes: Iterable[GTScene], pred_scenes: Iterable[PredScene],
             class_ids: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
             ignored_labels: Sequence[str] = DEFAULT_IGNORED_LABELS,
             min_region_size: int = DEFAULT_MIN_REGION_SIZE,
             iou_thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
             splits: Mapping[str, Sequence[str]] | None = None) -> EvalResult:
    """ScanNet(200) instance AP of ``pred_scenes`` against ``gt_scenes`` (paired by scene id).

    Defaults are the ScanNet200 benchmark's: the 200 classes minus wall and floor, GT and
    predictions under 100 vertices ignored, AP over IoU 0.50:0.05:0.90, head/common/tail splits.
    """
    config = EvalConfig.make(class_ids, class_names, ignored_labels, min_region_size, iou_thresholds, splits)
    return summarize((match_scene(g, p, config) for g, p in pair_scenes(gt_scenes, pred_scenes)), config)
