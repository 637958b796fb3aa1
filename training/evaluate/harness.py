"""The evaluation harness: one proposal set per scene, labelled by student, teacher and baseline.

Used by ``python -m training.evaluate`` (:mod:`training.evaluate.__main__`, which writes the
report). Per scene (ScanNet layout, with GT; :func:`evaluate_scene`):

1. **read** -- the mesh (its vertices are the cloud and carry the GT) and, for the methods
   that need images, every ``every``-th RGB-D frame (in memory; reading is timed apart and
   charged to no method);
2. **proposals** -- one class-agnostic set shared by every method (:func:`make_proposals`):
   the bundle's Mask3D (``Mask3D.predict`` with the Segmenter's post-processing: no DBSCAN,
   mask NMS at ``SegmenterConfig.nms_iou``, proposals under ``min_points`` dropped), or the GT
   instances (wall, floor and ceiling left out, score 1). Mask3D's point features are computed
   in both cases when the student runs: it pools them;
3. **labels** -- each method labels the same proposals against the same text embeddings (the
   bundle's CLIP with the bundle's prompt template):

   * ``student`` (:func:`label_student`, paper Eq. 7 and section 3.3): masked mean of Mask3D
     point features (``pool``), the student's MLP (``mlp``), cosine similarity to the text
     embeddings, softmax at the bundle's temperature (``similarity``) -- exactly what
     :meth:`folk_ros.core.segmenter.Segmenter.segment` does after its proposals, with the
     Segmenter's own student module and config;
   * ``teacher`` (and its ablation variants ``teacher-topk``, ``teacher-sparse``,
     ``teacher-crop``, ``teacher-mean``) and ``baseline`` (OpenMask3D-style crops): as in
     :mod:`training.evaluate.teacher_eval` -- projection, view selection, mask completion,
     CLIP, pooling, then classification of the views (temperature 1 / CLIP's logit scale);
     proposals no frame sees get no prediction;

4. **predictions** -- mask, label, confidence = proposal score x label probability (the
   Segmenter's confidence; GT proposals have score 1), every labelled proposal kept (the
   benchmark ranks by confidence; the Segmenter's display threshold and instance cap are
   not applied), matched to the GT at once (:func:`training.evaluate.instance_ap.match_scene`),
   so memory stays at one scene's masks.

**Label stage** of a method: the seconds after the proposals until its labels, i.e. the sum
of its stages (student: pool + mlp + similarity; teacher: projection + selection + completion
+ clip + pooling + classify; baseline: projection + selection + crops + clip + classify); the
teacher's ``io`` (frames come from memory here) is not part of it. **Time per scene** of a
method: its label stage plus the Mask3D pass when the method uses it (the student always: it
pools Mask3D features; teacher and baseline only with Mask3D proposals). On CUDA the student's
stages and the Mask3D pass end with a device synchronisation, so the clock sees the GPU work.

**Matching rate** (:func:`matching_counts`): the fraction of GT instances whose best-IoU
proposal has IoU >= 0.5, ``|{g in G : max_p IoU(p, g) >= 0.5}| / |G|``, pooled over the scenes
(sum of matched / sum of |G|). G = the GT instances the AP protocol counts (an evaluated class,
at least ``min_region_size`` = 100 vertices); p runs over all the shared proposals, labels
ignored; IoU over mesh vertices. It depends only on the proposals, so it is the same for
every method: the recall at IoU 0.5 that a perfect labelling of these proposals could reach
(the AP matching uses the strict IoU > 0.5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from folk_ros.core.student import classify, voxel_masked_mean
from folk_ros.core.voxel_masks import VoxelMasks
from training.data.scannet import read_frames, read_scene_mesh
from training.data.vocabularies import label_ids_of
from training.evaluate.instance_ap import LABEL_DIVISOR, EvalConfig, GTScene, PredScene, intersections, match_scene
from training.evaluate.teacher_eval import METHODS as TEACHER_METHODS
from training.evaluate.teacher_eval import predictions, run_method
from training.teacher.baseline import OpenMaskBaseline
from training.teacher.config import TeacherConfig
from training.teacher.proposals import gt_proposals
from training.teacher.teacher import Classification, StageTimer, Teacher

STUDENT = "student"
ALL_METHODS: tuple[str, ...] = (STUDENT, *TEACHER_METHODS)
PROPOSAL_SOURCES = ("mask3d", "gt")
STUDENT_STAGES = ("pool", "mlp", "similarity")
NOT_LABEL_STAGES = ("io",)  # teacher stages that are frame reading, not labelling
MATCH_IOU = 0.5


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class HarnessConfig:
    """What ``python -m training.evaluate`` runs.

    Attributes:
        methods: labellers, from :data:`ALL_METHODS`, in report order.
        proposals: ``"mask3d"`` (the bundle's Mask3D) or ``"gt"`` (the GT instances).
        every: frame stride of the teacher and the baseline [frames].
        clip_image_size: (H, W) pixels fed to CLIP by the teacher (``TeacherConfig.clip_image_size``).
        match_iou: IoU a GT instance's best proposal needs to count as matched (matching rate).
        warmup: scenes run once untimed before the measured pass (CUDA init, allocator, caches).
    """

    methods: tuple[str, ...] = (STUDENT, "teacher", "baseline")
    proposals: str = "mask3d"
    every: int = TeacherConfig.frame_stride
    clip_image_size: tuple[int, int] = TeacherConfig.clip_image_size
    match_iou: float = MATCH_IOU
    warmup: int = 1

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("give at least one method")
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; known: {list(ALL_METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods listed twice: {list(self.methods)}")
        if self.proposals not in PROPOSAL_SOURCES:
            raise ValueError(f"proposals must be one of {PROPOSAL_SOURCES}, got {self.proposals!r}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if not 0.0 < self.match_iou <= 1.0:
            raise ValueError(f"match_iou must be in (0, 1], got {self.match_iou}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    @property
    def teacher_config(self) -> TeacherConfig:
        return TeacherConfig(frame_stride=self.every, clip_image_size=tuple(self.clip_image_size))

    @property
    def needs_frames(self) -> bool:
        return any(m != STUDENT for m in self.methods)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock stage times include it (CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- proposals


@dataclass
class SharedProposals:
    """The proposals every method labels, over a scene's N points.

    Attributes:
        masks: (M, N) bool numpy.
        scores: (M,) float32 proposal scores (Mask3D's, or 1 for GT instances).
        gt_label_ids: (M,) int64 ScanNet200 id of GT proposals (-1 for Mask3D proposals).
        seconds: the Mask3D pass (forward + post-processing), 0 without it.
        voxel_masks, voxel_features, voxel_points: Mask3D proposals as Mask3D gives them, on the Segmenter's
            device: the M masks over V voxels (:class:`VoxelMasks`), (V, D) float32 features, (V,) points per
            voxel (the student pools per voxel, as :meth:`Segmenter.embed`); None for GT proposals.
        point_features, masks_device: GT proposals with Mask3D features: (N, D) float32 point features and
            the (M, N) bool masks on the device (the student pools per point); None otherwise.
    """

    masks: np.ndarray
    scores: np.ndarray
    gt_label_ids: np.ndarray
    seconds: float = 0.0
    voxel_masks: VoxelMasks | None = None
    voxel_features: torch.Tensor | None = None
    voxel_points: torch.Tensor | None = None
    point_features: torch.Tensor | None = None
    masks_device: torch.Tensor | None = None

    @property
    def num(self) -> int:
        return int(self.masks.shape[0])

    @property
    def has_features(self) -> bool:
        return self.voxel_features is not None or self.point_features is not None

    def pooled(self, student) -> torch.Tensor:
        """(M, D) masked mean of the Mask3D features of each proposal (Eq. 7 pooling)."""
        if self.voxel_masks is not None:
            return voxel_masked_mean(self.voxel_features, self.voxel_masks, self.voxel_points)
        if self.point_features is None:
            raise ValueError("the student needs Mask3D point features (make_proposals(need_features=True))")
        return student.pool(self.point_features, self.masks_device)


def make_proposals(segmenter, points: np.ndarray, colors: np.ndarray, source: str = "mask3d",
                   gt_instance_ids: np.ndarray | None = None, gt_instance_labels: dict | None = None,
                   need_features: bool = True) -> SharedProposals:
    """One scene's shared proposals (module docstring, step 2).

    Args:
        segmenter: a :class:`folk_ros.core.segmenter.Segmenter` (its Mask3D, device and config).
        points: (N, 3) float32 metres; colors: (N, 3) uint8 or float in [0, 1].
        source: ``"mask3d"`` or ``"gt"``.
        gt_instance_ids: (N,) GT instance id per point (0 = none), for ``source="gt"``.
        gt_instance_labels: {instance id: class name}, for ``source="gt"``.
        need_features: run Mask3D for its point features even with GT proposals.
    """
    if source not in PROPOSAL_SOURCES:
        raise ValueError(f"source must be one of {PROPOSAL_SOURCES}, got {source!r}")
    dev, cfg = segmenter.device, segmenter.cfg
    pred, seconds = None, 0.0
    if source == "mask3d" or need_features:
        t0 = time.perf_counter()
        pred = segmenter.mask3d.predict(points, colors, point_features=cfg.point_features,
                                        post=cfg.proposal_postprocess())  # as Segmenter.embed
        voxel_masks, scores_t = pred.voxel_masks.to(dev), pred.scores.to(dev)
        synchronize(dev)
        seconds = time.perf_counter() - t0
    if source == "gt":
        if gt_instance_ids is None or gt_instance_labels is None:
            raise ValueError("GT proposals need gt_instance_ids and gt_instance_labels")
        gt = gt_proposals(gt_instance_ids, gt_instance_labels)
        features = None if pred is None else pred.point_features.to(dev)
        return SharedProposals(gt.masks, gt.scores, gt.label_ids, seconds, point_features=features,
                               masks_device=torch.from_numpy(gt.masks).to(dev))
    masks = voxel_masks.to("cpu").to_points(pred.inverse_map.cpu()).numpy()
    return SharedProposals(masks, scores_t.float().cpu().numpy(), np.full(masks.shape[0], -1, np.int64), seconds,
                           voxel_masks=voxel_masks, voxel_features=pred.voxel_features.to(dev),
                           voxel_points=pred.voxel_points.to(dev))


# --------------------------------------------------------------------------- labelling


def label_student(segmenter, proposals: SharedProposals, text: torch.Tensor) -> tuple[Classification, dict]:
    """The student's labels of the proposals (paper Eq. 7 + cosine similarity), and its stage seconds.

    The computation of :meth:`Segmenter.segment` after its proposals: the masked mean of the Mask3D
    features (per voxel for Mask3D proposals, per point for GT ones), ``student.project`` (MLP, L2 norm),
    then :func:`classify` (``softmax(embedding @ text.T / temperature)``, label = argmax).

    Args:
        segmenter: the Segmenter whose student and temperature are used.
        proposals: with Mask3D features.
        text: (K, C) unit text embeddings on the Segmenter's device.

    Returns:
        (Classification with (M,) labels, probs, (M, C) embeddings; timings {pool, mlp, similarity}).
    """
    if not proposals.has_features:
        raise ValueError("the student needs Mask3D point features (make_proposals(need_features=True))")
    dev = segmenter.device
    timer = StageTimer(STUDENT_STAGES)
    with torch.inference_mode():
        with timer("pool"):
            pooled = proposals.pooled(segmenter.student)  # (M, D)
            synchronize(dev)
        with timer("mlp"):
            emb = segmenter.student.project(pooled)  # (M, C) unit norm
            synchronize(dev)
        with timer("similarity"):
            label_probs, labels = classify(emb, text, segmenter.cfg.temperature)   # one matmul
            synchronize(dev)
    m = proposals.num
    cls = Classification(labels.cpu().numpy().astype(np.int64), label_probs.float().cpu().numpy(),
                         emb.float().cpu().numpy(), np.ones(m, np.int64))
    return cls, dict(timer.seconds)


def no_labels(num: int, dim: int) -> Classification:
    """The classification of ``num`` proposals when nothing could be labelled."""
    return Classification(np.full(num, -1, np.int64), np.zeros(num, np.float32), np.zeros((num, dim), np.float32),
                          np.zeros(num, np.int64))


class Labellers:
    """The methods' models, built once: the Segmenter for the student, teacher/baseline pipelines on its CLIP."""

    def __init__(self, segmenter, cfg: HarnessConfig, vocabulary: tuple[str, ...]) -> None:
        self.segmenter, self.cfg, self.vocabulary = segmenter, cfg, vocabulary
        self.vocab_ids = label_ids_of(vocabulary)
        t0 = time.perf_counter()
        self.text = segmenter.text_embeddings(vocabulary)  # (K, C) on the device, bundle's prompt template
        synchronize(segmenter.device)
        self.text_seconds = time.perf_counter() - t0
        self.text_cpu = self.text.float().cpu()
        clip = segmenter.clip
        self.teacher_temperature = float(1.0 / clip.model.logit_scale.exp().item())
        tcfg = cfg.teacher_config
        self.pipelines = {}
        for m in cfg.methods:
            if m == STUDENT:
                continue
            kind, variant, _ = TEACHER_METHODS[m]
            self.pipelines[m] = Teacher(clip, tcfg, variant) if kind == "teacher" else OpenMaskBaseline(clip, tcfg)

    def label(self, method: str, points: np.ndarray, proposals: SharedProposals, frames: list) -> tuple[
            Classification, dict]:
        """(Classification, stage seconds) of one method on one scene's proposals."""
        if proposals.num == 0:
            return no_labels(0, self.text.shape[1]), {}
        if method == STUDENT:
            return label_student(self.segmenter, proposals, self.text)
        run = run_method(self.pipelines[method], TEACHER_METHODS[method][2], points, proposals.masks, frames,
                         self.text_cpu, self.teacher_temperature)
        return run.classification, dict(run.result.timings)


def label_seconds(method: str, timings: dict) -> float:
    """The label stage of a method: all its stages but frame reading (module docstring)."""
    return float(sum(v for k, v in timings.items() if k not in NOT_LABEL_STAGES))


def uses_mask3d(method: str, proposal_source: str) -> bool:
    """Whether a method's time per scene includes the Mask3D pass (module docstring)."""
    return method == STUDENT or proposal_source == "mask3d"


# --------------------------------------------------------------------------- matching rate


def matching_counts(gt: GTScene, masks: np.ndarray, config: EvalConfig, iou: float = MATCH_IOU) -> tuple[int, int]:
    """(matched, counted): GT instances whose best proposal has IoU >= ``iou``, and all counted GT.

    Counted GT: ids of an evaluated class (``config.class_ids``) with at least
    ``config.min_region_size`` vertices -- those the AP protocol scores. ``masks`` (M, N) bool
    are the class-agnostic proposals; IoU = |P n G| / (|P| + |G| - |P n G|) over vertices.
    """
    masks = np.asarray(masks, bool)
    n = gt.num_vertices
    if masks.ndim != 2 or masks.shape[1] != n:
        raise ValueError(f"scene {gt.scene_id}: proposal masks must be (M, N={n}), got {masks.shape}")
    evaluated = np.isin(gt.ids // LABEL_DIVISOR, np.asarray(config.class_ids, np.int64)) & (gt.ids > 0)
    uids, inverse = np.unique(gt.ids[evaluated], return_inverse=True)
    g = uids.size
    columns = np.full(n, g, np.int64)
    columns[evaluated] = inverse
    gt_sizes = np.bincount(columns, minlength=g + 1)[:g]
    counted = gt_sizes >= config.min_region_size
    if masks.shape[0] == 0 or g == 0:
        return 0, int(counted.sum())
    inter_all = intersections(masks, columns, g + 1)  # (M, G + 1), last column: the rest
    sizes = inter_all.sum(axis=1)  # (M,) proposal sizes
    inter = inter_all[:, :g]
    union = sizes[:, None] + gt_sizes[None, :] - inter
    best = (inter / np.maximum(union, 1)).max(axis=0)  # (G,)
    return int(((best >= iou) & counted).sum()), int(counted.sum())


# --------------------------------------------------------------------------- one scene


@dataclass
class SceneOutput:
    """One scene evaluated: its GT, the predictions and matches per method, and a report row."""

    gt: GTScene
    preds: dict[str, PredScene]
    matches: dict[str, dict]
    row: dict = field(default_factory=dict)


def read_scene(scene_dir: Path, every: int, with_frames: bool):
    """(mesh, frames list, {"read_mesh": s, "read_frames": s}) of a ScanNet-layout scene folder."""
    t0 = time.perf_counter()
    mesh = read_scene_mesh(scene_dir)
    t1 = time.perf_counter()
    frames = list(read_frames(scene_dir, every=every)) if with_frames else []
    return mesh, frames, {"read_mesh": t1 - t0, "read_frames": time.perf_counter() - t1}


def evaluate_scene(scene_dir: Path, labellers: Labellers, config: EvalConfig) -> SceneOutput:
    """Proposals, every method's labels and predictions, and the matches of one scene (module docstring)."""
    cfg = labellers.cfg
    mesh, frames, read = read_scene(Path(scene_dir), cfg.every, cfg.needs_frames)
    props = make_proposals(labellers.segmenter, mesh.vertices, mesh.colors, cfg.proposals, mesh.instance_ids,
                           mesh.instance_labels, need_features=STUDENT in cfg.methods)
    gt = GTScene.from_mesh(mesh)
    matched, counted = matching_counts(gt, props.masks, config, cfg.match_iou)
    row = {"scene_id": mesh.scene_id, "points": int(mesh.num_vertices), "frames": len(frames),
           "proposals": props.num, "gt_instances": counted, "matched": matched,
           "shared_seconds": {**read, "mask3d": props.seconds}, "methods": {}}
    preds, matches = {}, {}
    for m in cfg.methods:
        cls, timings = labellers.label(m, mesh.vertices, props, frames)
        pred = predictions(mesh.scene_id, props.masks, cls, labellers.vocab_ids, props.scores)
        preds[m], matches[m] = pred, match_scene(gt, pred, config)
        lab = label_seconds(m, timings)
        has = cls.labels >= 0
        correct = None
        if cfg.proposals == "gt":
            pred_ids = np.where(has, labellers.vocab_ids[np.maximum(cls.labels, 0)], -1)
            correct = int((pred_ids == props.gt_label_ids).sum())
        row["methods"][m] = {"stage_seconds": timings, "label_seconds": lab,
                             "seconds": lab + (props.seconds if uses_mask3d(m, cfg.proposals) else 0.0),
                             "predictions": pred.num_predictions, "labelled": int(has.sum()), "correct": correct}
    return SceneOutput(gt, preds, matches, row)
