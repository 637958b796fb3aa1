"""The FOLK teacher as a pipeline (paper section 3.1), and the teacher as a classifier.

Per scene, from 3D instance proposals (GT instance masks over mesh vertices, or Mask3D's)
and RGB-D frames (every 10th frame of the sequence, ``TeacherConfig.frame_stride``):

1. **projection** -- each proposal's points into each frame with the depth test
   (:func:`training.teacher.projection.project_instances`), giving the (M, F) visible-pixel
   counts and each frame's sparse masks (kept compact: (instance, pixel) pairs);
2. **selection** -- Eq. 1 per instance (:func:`~training.teacher.view_selection.select_views_batch`);
3. per selected frame, for all instances that chose it at once:
   **completion** -- Eq. 2-5 on the sparse masks (:func:`~training.teacher.mask_completion.complete_masks`);
   **clip** -- the frame's CLIP dense feature map, computed once and shared by the instances
   (frames go through CLIP in batches of ``frame_batch``);
   **pooling** -- Eq. 6, masked mean + perceptron + L2 norm (:func:`~training.teacher.mask_pooling.mask_embeddings`);
4. the result: one embedding per (instance, view), ragged -- ``view_embeddings`` (V, C) with
   ``view_instance`` (V,) -- which is what the distillation (Eq. 8-10) and the cache take.

Frames are read twice (pass 1 for projection, pass 2 only the selected frames), so a scene
never holds all its colour images in memory; a ``Sequence`` of frames is indexed in pass 2,
any other re-iterable (a reader over a folder or a bag) is re-iterated.

Variants for the ablation (:class:`TeacherVariant`): top-k_pre views without the angle
filter vs Eq. 1 multi-view selection; the sparse projected mask vs the completed one; a
CLIP image embedding of the mask's bounding-box crop vs mask pooling of dense features.

The teacher as a classifier (:func:`classify`): ``"vote"`` (default) labels an instance by
Eq. 8-9 (each view takes its nearest text embedding, the majority wins) and scores it with
the mean of its agreeing views (Eq. 10), exactly the pseudo-label the student is trained on;
``"mean"`` compares the mean of all view embeddings with the text (OpenMask3D's rule).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from training.data.types import Frame
from training.teacher.config import TeacherConfig, TeacherVariant
from training.teacher.mask_completion import complete_masks
from training.teacher.mask_pooling import MaskPoolingHead, mask_embeddings
from training.teacher.projection import project_instances
from training.teacher.pseudo_labels import pseudo_labels
from training.teacher.view_selection import select_views_batch

TEACHER_STAGES = ("io", "projection", "selection", "completion", "clip", "pooling")
CLASSIFY_METHODS = ("vote", "mean")


# --------------------------------------------------------------------------- timing


class StageTimer:
    """Wall-clock seconds per named stage, accumulated over ``with timer("stage"):`` blocks."""

    def __init__(self, stages: Iterable[str] = ()) -> None:
        self.seconds: dict[str, float] = {s: 0.0 for s in stages}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def timed_iter(self, items: Iterable, stage: str = "io") -> Iterator:
        """Yield from ``items``, charging the time spent producing each item to ``stage``."""
        it = iter(items)
        while True:
            with self(stage):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item


# --------------------------------------------------------------------------- inputs


def check_proposals(masks: np.ndarray, num_points: int) -> np.ndarray:
    """(M, N) bool proposal masks, validated; ValueError naming what is wrong."""
    masks = np.asarray(masks)
    if masks.ndim != 2 or masks.shape[1] != num_points:
        raise ValueError(f"proposal masks must be (M, N={num_points}), got {masks.shape}")
    if masks.dtype != bool:
        raise ValueError(f"proposal masks must be bool, got {masks.dtype}")
    return masks


def check_reiterable(frames: Iterable[Frame]) -> Iterable[Frame]:
    """``frames`` unless it is a one-shot iterator (the teacher reads the frames twice)."""
    if iter(frames) is frames:
        raise ValueError("frames must be re-iterable (a list, a Sequence or a frame source object), "
                         "not a one-shot iterator: the teacher reads them twice")
    return frames


def selected_frames(frames: Iterable[Frame], positions: Sequence[int]) -> Iterator[tuple[int, Frame]]:
    """Yield ``(position, frame)`` for the given ascending positions of a re-iterable of frames.

    A ``Sequence`` is indexed (nothing else is read); any other iterable is walked and the
    frames not asked for are skipped.
    """
    wanted = sorted(set(int(p) for p in positions))
    if isinstance(frames, Sequence):
        for p in wanted:
            yield p, frames[p]
        return
    want = set(wanted)
    for p, frame in enumerate(frames):
        if p in want:
            yield p, frame
            want.discard(p)
            if not want:
                return
    if want:
        raise ValueError(f"the frames changed between passes: positions {sorted(want)[:5]} are missing")


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------- projection pass


@dataclass(frozen=True)
class SceneProjection:
    """Pass 1 over a scene's frames: visibility of M proposals in F frames.

    Attributes:
        frame_ids: (F,) int64 ``Frame.index`` of each frame (in the sequence's numbering).
        poses: (F, 4, 4) float64 camera-to-world.
        image_sizes: (F, 2) int64 (H, W).
        pixel_counts: (M, F) int64 distinct visible pixels (Eq. 1's ranking score).
        point_counts: (M, F) int64 visible points (OpenMask3D's ranking score).
        pairs: per frame, ``(instance_index (P,), pixel_index (P,))`` int64 of its sparse
            masks (distinct (instance, flat pixel) pairs, sorted by instance).
    """

    frame_ids: np.ndarray
    poses: np.ndarray
    image_sizes: np.ndarray
    pixel_counts: np.ndarray
    point_counts: np.ndarray
    pairs: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def num_instances(self) -> int:
        return int(self.pixel_counts.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.frame_ids.shape[0])

    def sparse_masks(self, position: int, instances: Sequence[int]) -> np.ndarray:
        """(K, H, W) bool sparse masks of the given instances in frame ``position``."""
        h, w = (int(v) for v in self.image_sizes[position])
        inst, pix = self.pairs[position]
        ids = np.asarray(instances, dtype=np.int64)
        row_of = np.full(self.num_instances, -1, dtype=np.int64)
        row_of[ids] = np.arange(len(ids))
        rows = row_of[inst]
        keep = rows >= 0
        out = np.zeros((len(ids), h * w), dtype=bool)
        out[rows[keep], pix[keep]] = True
        return out.reshape(len(ids), h, w)


def project_scene(points: np.ndarray, masks: np.ndarray, frames: Iterable[Frame], depth_threshold: float,
                  timer: StageTimer | None = None) -> SceneProjection:
    """Project M proposals into every frame (pass 1); time goes to ``io`` and ``projection``.

    Args:
        points: (N, 3) world coordinates (mesh vertices or cloud points), metres.
        masks: (M, N) bool proposals.
        frames: the scene's (already subsampled) frames.
        depth_threshold: visibility threshold, metres.
    """
    points = np.asarray(points, dtype=np.float64)
    masks = check_proposals(masks, points.shape[0] if points.ndim == 2 else -1)
    timer = timer or StageTimer()
    ids, poses, sizes, pix_cols, pt_cols, pairs = [], [], [], [], [], []
    for frame in timer.timed_iter(frames, "io"):
        with timer("projection"):
            proj = project_instances(points, masks, frame, depth_threshold)
            ids.append(int(frame.index))
            poses.append(np.asarray(frame.pose, dtype=np.float64))
            sizes.append((proj.height, proj.width))
            pix_cols.append(proj.counts)
            pt_cols.append(np.count_nonzero(masks[:, proj.visible], axis=1))
            pairs.append((proj.instance_index, proj.pixel_index))
    if not ids:
        raise ValueError("the scene has no frames")
    return SceneProjection(
        frame_ids=np.asarray(ids, dtype=np.int64),
        poses=np.stack(poses),
        image_sizes=np.asarray(sizes, dtype=np.int64),
        pixel_counts=np.stack(pix_cols, axis=1).astype(np.int64),
        point_counts=np.stack(pt_cols, axis=1).astype(np.int64),
        pairs=tuple(pairs),
    )


# --------------------------------------------------------------------------- boxes and crops


def mask_boxes(masks: np.ndarray, level: int = 0, expansion: float = 0.1) -> np.ndarray:
    """(K, 4) int64 boxes ``(x0, y0, x1, y1)`` (exclusive ends) of K non-empty masks.

    Level l widens each side by ``floor(size * expansion) * l`` pixels, clipped to the image
    (OpenMask3D's multi-level crops: level 0 is the tight box).

    Args:
        masks: (K, H, W) bool, none empty.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != bool:
        raise ValueError(f"masks must be (K, H, W) bool, got {masks.shape} {masks.dtype}")
    if level < 0 or expansion < 0:
        raise ValueError(f"need level >= 0 and expansion >= 0, got {level}, {expansion}")
    k, h, w = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (K, H), (K, W)
    if k and not rows.any(axis=1).all():
        raise ValueError("empty mask: it has no bounding box")
    y0 = rows.argmax(axis=1)
    y1 = h - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = w - cols[:, ::-1].argmax(axis=1)
    dx = np.floor((x1 - x0 - 1) * expansion).astype(np.int64) * level
    dy = np.floor((y1 - y0 - 1) * expansion).astype(np.int64) * level
    return np.stack([np.maximum(x0 - dx, 0), np.maximum(y0 - dy, 0),
                     np.minimum(x1 + dx, w), np.minimum(y1 + dy, h)], axis=1).astype(np.int64)


def crop_images(color: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """Crops ``color[y0:y1, x0:x1]`` (H_i, W_i, 3) uint8 of (K, 4) boxes from :func:`mask_boxes`."""
    return [color[y0:y1, x0:x1] for x0, y0, x1, y1 in np.asarray(boxes).tolist()]


# --------------------------------------------------------------------------- results


@dataclass
class TeacherResult:
    """Per-instance per-view CLIP embeddings of one scene (ragged, one row per view).

    Attributes:
        view_embeddings: (V, C) float32, L2-normalised.
        view_instance: (V,) int64 instance of each row in [0, M), ascending; within an
            instance, views in selection order (most visible pixels first).
        view_frame: (V,) int64 ``Frame.index`` of each view.
        visible_counts: (M, F) int64 visible pixels per instance and frame.
        frame_ids: (F,) int64 ``Frame.index`` of the frames considered.
        timings: seconds per stage (:data:`TEACHER_STAGES` or the baseline's).
    """

    view_embeddings: np.ndarray
    view_instance: np.ndarray
    view_frame: np.ndarray
    visible_counts: np.ndarray
    frame_ids: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_instances(self) -> int:
        return int(self.visible_counts.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.view_instance.shape[0])

    @property
    def total_seconds(self) -> float:
        return float(sum(self.timings.values()))


def assemble_views(per_frame: list[tuple[np.ndarray, np.ndarray, int]], ranks: dict[tuple[int, int], int],
                   projection: SceneProjection, embed_dim: int, timings: dict[str, float]) -> TeacherResult:
    """Sort per-frame outputs ``(instances (K,), embeddings (K, C), frame position)`` into a
    :class:`TeacherResult` ordered by instance, then selection rank (``ranks[(m, pos)]``)."""
    if per_frame:
        inst = np.concatenate([i for i, _, _ in per_frame]).astype(np.int64)
        emb = np.concatenate([e for _, e, _ in per_frame]).astype(np.float32)
        pos = np.concatenate([np.full(len(i), p, dtype=np.int64) for i, _, p in per_frame])
    else:
        inst, emb, pos = np.zeros(0, np.int64), np.zeros((0, embed_dim), np.float32), np.zeros(0, np.int64)
    rank = np.asarray([ranks[(int(m), int(p))] for m, p in zip(inst, pos)], dtype=np.int64)
    order = np.lexsort((rank, inst))
    return TeacherResult(
        view_embeddings=np.ascontiguousarray(emb[order]),
        view_instance=inst[order],
        view_frame=projection.frame_ids[pos[order]],
        visible_counts=projection.pixel_counts,
        frame_ids=projection.frame_ids,
        timings=dict(timings),
    )


def views_by_frame(selection: Sequence[Sequence[int]]) -> tuple[dict[int, list[int]], dict[tuple[int, int], int]]:
    """Invert per-instance frame lists: {frame position: [instances]} and {(instance, position): rank}."""
    by_frame: dict[int, list[int]] = {}
    ranks: dict[tuple[int, int], int] = {}
    for m, positions in enumerate(selection):
        for r, p in enumerate(positions):
            by_frame.setdefault(int(p), []).append(m)
            ranks[(m, int(p))] = r
    return by_frame, ranks


# --------------------------------------------------------------------------- the teacher


class Teacher:
    """FOLK's teacher: proposals + frames -> per-instance per-view CLIP embeddings.

    Args:
        clip: a :class:`folk_ros.core.clip.ClipModel` (dense features; crops for ``bbox_crop``).
        cfg: projection, selection, completion and pooling settings.
        variant: ablation switches (defaults = the paper's teacher).
        head: Eq. 6's perceptron; identity-initialised (plain MaskCLIP pooling) when None.
        frame_batch: selected frames whose dense maps are computed in one CLIP call (memory:
            ``frame_batch`` colour images and maps at a time).
    """

    def __init__(self, clip, cfg: TeacherConfig = TeacherConfig(), variant: TeacherVariant = TeacherVariant(),
                 head: MaskPoolingHead | None = None, frame_batch: int = 8) -> None:
        if frame_batch < 1:
            raise ValueError(f"frame_batch must be >= 1, got {frame_batch}")
        self.clip = clip
        self.frame_batch = frame_batch
        self.cfg = cfg
        self.variant = variant
        self.head = (head or MaskPoolingHead(clip.embed_dim)).to(clip.device).eval()
        if self.head.proj.in_features != clip.embed_dim:
            raise ValueError(f"head dim {self.head.proj.in_features} != CLIP embed_dim {clip.embed_dim}")

    def select(self, projection: SceneProjection) -> list[list[int]]:
        """Frame positions per instance: Eq. 1 (``views="multi"``) or plain top-k_pre."""
        angle = self.cfg.angle_threshold_deg if self.variant.views == "multi" else 0.0
        # with a 0 degree threshold no frame is "closer than" a kept one: Eq. 1 reduces to top-k_pre
        return select_views_batch(projection.pixel_counts, projection.poses, self.cfg.k_pre, angle,
                                  self.cfg.min_visible_pixels)

    def _dense_features(self, chunk: list[tuple[int, Frame]]) -> list[torch.Tensor]:
        """Per frame of the chunk, its (C, h, w) CLIP dense map (one batched call when sizes agree)."""
        size = tuple(self.cfg.clip_image_size)
        colors = [f.color for _, f in chunk]
        if len({c.shape for c in colors}) == 1:
            return list(self.clip.dense_features(np.stack(colors), size=size, batch_size=len(colors)))
        return [self.clip.dense_features(c[None], size=size)[0] for c in colors]

    def _embed_masks(self, frame: Frame, feats: torch.Tensor | None, masks: np.ndarray,
                     timer: StageTimer) -> np.ndarray:
        """(K, C) embeddings of K masks in one frame: Eq. 6 on ``feats`` (C, h, w), or bbox crops."""
        if self.variant.embedding == "bbox_crop":
            with timer("pooling"):
                crops = crop_images(frame.color, mask_boxes(masks))
            with timer("clip"):
                return self.clip.encode_images(crops).cpu().numpy()
        with timer("pooling"), torch.inference_mode():
            emb = mask_embeddings(feats, torch.from_numpy(masks), self.head, min_coverage=self.cfg.pool_min_coverage)
            return emb.float().cpu().numpy()

    def embed(self, points: np.ndarray, masks: np.ndarray, frames: Iterable[Frame]) -> TeacherResult:
        """Run the teacher on one scene.

        Args:
            points: (N, 3) world coordinates of the cloud the proposals index, metres.
            masks: (M, N) bool proposals.
            frames: re-iterable RGB-D frames (already every ``cfg.frame_stride``-th).

        Returns:
            :class:`TeacherResult`; instances seen in no frame have no rows.
        """
        frames = check_reiterable(frames)
        timer = StageTimer(TEACHER_STAGES)
        proj = project_scene(points, masks, frames, self.cfg.depth_threshold, timer)
        with timer("selection"):
            by_frame, ranks = views_by_frame(self.select(proj))
        per_frame = []
        for chunk in chunked(timer.timed_iter(selected_frames(frames, list(by_frame)), "io"), self.frame_batch):
            feats: list = [None] * len(chunk)
            if self.variant.embedding == "mask_pool":
                with timer("clip"):
                    feats = self._dense_features(chunk)
            for (pos, frame), feat in zip(chunk, feats):
                insts = np.asarray(by_frame[pos], dtype=np.int64)
                with timer("completion"):
                    m = proj.sparse_masks(pos, insts)
                    if self.variant.mask == "completed":
                        m = complete_masks(m, self.cfg)
                per_frame.append((insts, self._embed_masks(frame, feat, m, timer), pos))
        return assemble_views(per_frame, ranks, proj, self.clip.embed_dim, timer.seconds)


# --------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class Classification:
    """Labels of M instances from their views.

    Attributes:
        labels: (M,) int64 index into the vocabulary, -1 for instances without views.
        probs: (M,) float32 softmax probability of the chosen label (0 without views).
        embeddings: (M, C) float32 unit instance embedding the probability is computed from
            (zeros without views).
        num_views: (M,) int64 views of each instance.
    """

    labels: np.ndarray
    probs: np.ndarray
    embeddings: np.ndarray
    num_views: np.ndarray

    @property
    def has_label(self) -> np.ndarray:
        """(M,) bool: the instance had at least one view."""
        return self.labels >= 0


def _cpu_tensor(x) -> torch.Tensor:
    return x.detach().cpu() if torch.is_tensor(x) else torch.from_numpy(np.asarray(x))


def classify(view_embeddings, view_instance, text_embeddings, num_instances: int, method: str = "vote",
             temperature: float = 0.01) -> Classification:
    """The teacher as a classifier: label each instance by its views.

    ``"vote"`` (default, the paper's teacher and the distillation's pseudo-label, Eq. 8-10):
    each view takes its nearest text embedding, the majority label wins (ties to the larger
    summed similarity) and the instance embedding is the normalised mean of the agreeing
    views. ``"mean"`` (OpenMask3D's rule): the normalised mean of all views, label = nearest
    text embedding. In both, ``probs = softmax(embedding . text / temperature)[label]``
    (temperature 0.01 = CLIP's learned logit scale of 100).

    Args:
        view_embeddings: (V, C) float (numpy or torch).
        view_instance: (V,) int instance of each view in [0, M).
        text_embeddings: (K, C) float text embeddings of the vocabulary.
        num_instances: M.
        method: ``"vote"`` or ``"mean"``.
        temperature: softmax temperature (> 0).
    """
    if method not in CLASSIFY_METHODS:
        raise ValueError(f"method must be one of {CLASSIFY_METHODS}, got {method!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    emb = _cpu_tensor(view_embeddings).float()
    inst = _cpu_tensor(view_instance).long()
    text = F.normalize(_cpu_tensor(text_embeddings).float(), dim=1)
    if emb.ndim != 2 or text.ndim != 2 or emb.shape[1] != text.shape[1]:
        raise ValueError(f"view_embeddings (V, C) and text_embeddings (K, C) must share C, "
                         f"got {tuple(emb.shape)} and {tuple(text.shape)}")
    m, c = int(num_instances), emb.shape[1]
    labels = torch.full((m,), -1, dtype=torch.long)
    inst_emb = torch.zeros(m, c)
    num_views = torch.bincount(inst, minlength=m)[:m] if len(inst) else torch.zeros(m, dtype=torch.long)
    if method == "vote":
        pl = pseudo_labels(emb, inst, text, m)  # validates shapes and ranges
        labels[pl.instances] = pl.labels
        inst_emb[pl.instances] = pl.targets.float()
    else:
        if len(inst) and (int(inst.min()) < 0 or int(inst.max()) >= m):
            raise ValueError(f"view_instance must lie in [0, {m})")
        sums = torch.zeros(m, c).index_add_(0, inst, F.normalize(emb, dim=1))
        has = num_views > 0
        inst_emb[has] = F.normalize(sums[has], dim=1)
        labels[has] = (inst_emb[has] @ text.T).argmax(dim=1)
    probs = torch.zeros(m)
    has = labels >= 0
    if has.any():
        p = (inst_emb[has] @ text.T / temperature).softmax(dim=1)
        probs[has] = p.gather(1, labels[has, None]).squeeze(1)
    return Classification(labels.numpy(), probs.numpy().astype(np.float32), inst_emb.numpy(), num_views.numpy())
