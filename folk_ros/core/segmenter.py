"""The runtime FOLK pipeline: cloud -> Mask3D proposals -> student embeddings -> labels.

``Segmenter.segment(cloud, vocabulary)`` needs only the point cloud (paper section 3.3,
inference): Mask3D proposes class-agnostic masks and per-point features, the student
(Eq. 7) embeds each proposal into CLIP space, and each embedding is classified against
the CLIP text embeddings of the vocabulary (cached per vocabulary) with one matmul.

The confidence of an instance is ``proposal score x softmax(similarity / tau)[label]``
(tau: the temperature the student was trained with), never a constant.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from folk_ros.core.bundle import read_manifest
from folk_ros.core.checkpoint_io import load_weights
from folk_ros.core.clip import ClipModel, resolve_device
from folk_ros.core.clip_weights import OPEN_CLIP_CONFIG_NAME, read_model_cfg
from folk_ros.core.cloud import PointCloud
from folk_ros.core.mask3d.checkpoint import load_checkpoint
from folk_ros.core.mask3d.model import Mask3D
from folk_ros.core.segmenter_config import SegmenterConfig
from folk_ros.core.sparse.minkowski import set_sparse_backend
from folk_ros.core.student import Student, classify  # noqa: F401  (classify: re-exported)
from folk_ros.core.text_encoder import BUNDLE_TEXT_DIR, TextEmbeddingStore, TextEncoder, source_key
from folk_ros.core.vocabulary import validate_vocabulary
from folk_ros.core.voxel_masks import VoxelMasks


class PointMasks:
    """Masks kept sparse (``voxel_masks`` over the voxels, ``inverse_map`` (N,) each point's voxel), with
    the dense (M, N) bool array made only when asked for (:attr:`masks`)."""

    voxel_masks: VoxelMasks
    inverse_map: np.ndarray

    @cached_property
    def masks(self) -> np.ndarray:
        """(M, N) bool over the cloud's points (computed once)."""
        return self.voxel_masks.to_points(torch.from_numpy(self.inverse_map)).numpy()


@dataclass
class Instances(PointMasks):
    """Labeled instances of one cloud, best first.

    Attributes:
        voxel_masks: the M masks over Mask3D's voxels of the cloud (:class:`VoxelMasks`, on the CPU).
        inverse_map: (N,) int64 voxel of each point of the cloud (:attr:`masks`: (M, N) bool, made on demand).
        label_indices: (M,) int64 index into ``vocabulary``.
        scores: (M,) float32 confidence = proposal_scores x label_probs.
        label_probs: (M,) float32 softmax probability of the chosen label.
        proposal_scores: (M,) float32 Mask3D proposal score.
        embeddings: (M, C) float32 unit-norm student embeddings.
        boxes: (M, 2, 3) float32 axis-aligned (min, max) corners.
        centroids: (M, 3) float32 mean point.
        vocabulary: the names the labels index.
        timings: milliseconds per stage (text, proposals, postprocess, student, classify, total).
    """

    voxel_masks: VoxelMasks
    inverse_map: np.ndarray
    label_indices: np.ndarray
    scores: np.ndarray
    label_probs: np.ndarray
    proposal_scores: np.ndarray
    embeddings: np.ndarray
    boxes: np.ndarray
    centroids: np.ndarray
    vocabulary: tuple[str, ...]
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.label_indices.shape[0])

    @property
    def labels(self) -> list[str]:
        return [self.vocabulary[i] for i in self.label_indices]


@dataclass
class EmbeddedProposals(PointMasks):
    """Class-agnostic proposals of one cloud with their student embeddings (no vocabulary yet).

    Attributes:
        voxel_masks: the M masks over Mask3D's voxels of the cloud (:class:`VoxelMasks`, on the CPU).
        inverse_map: (N,) int64 voxel of each point (a point's mask bit is its voxel's: :attr:`masks`).
        proposal_scores: (M,) float32 Mask3D scores.
        embeddings: (M, C) float32 unit-norm student embeddings (Eq. 7).
        timings: milliseconds of the stages: proposals (voxelisation and the Mask3D network), postprocess
            (mask threshold, DBSCAN split and NMS of the proposals) and student.
    """

    voxel_masks: VoxelMasks
    inverse_map: np.ndarray
    proposal_scores: np.ndarray
    embeddings: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.voxel_masks)


def _text_encoder(manifest, clip_file: str | Path | None, device: torch.device,
                  store_folder: str | Path | None) -> TextEncoder:
    """The bundle's CLIP (or ``clip_file``) behind a :class:`TextEncoder`: loaded later when a store is
    given and the CLIP is an open_clip folder (its config names the embedding size), now otherwise."""
    spec = Path(clip_file or manifest.path("clip"))
    name = f"local-dir:{spec}" if spec.is_dir() else str(spec)
    if store_folder is None or not spec.is_dir():
        return TextEncoder(ClipModel(name, device=device))
    key = manifest.sha256.get(manifest.clip) if clip_file is None else None
    seeds = [manifest.root / BUNDLE_TEXT_DIR] if key else []   # the bundle's own text, for its own CLIP
    store = TextEmbeddingStore(store_folder, key or source_key(spec), seeds=seeds)
    embed_dim = read_model_cfg(spec / OPEN_CLIP_CONFIG_NAME)["embed_dim"]
    return TextEncoder(lambda: ClipModel(name, device=device), embed_dim, store)


def mask_geometry(xyz: torch.Tensor, masks: VoxelMasks | torch.Tensor,
                  inverse_map: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask boxes and centroids of the points inside each mask -> ((M, 2, 3), (M, 3)).

    xyz (N, 3); masks: (M, N) bool over the points, or with ``inverse_map`` (N,) (each point's voxel) the
    M masks over voxels (:class:`VoxelMasks`). Per voxel the min, max, sum and count of its points, then
    per mask the same over its voxels: scatter reductions over (instance, voxel) entries, no (M, N, 3)
    tensor.
    """
    if inverse_map is None:
        inverse_map = torch.arange(xyz.shape[0], device=xyz.device)
    if not isinstance(masks, VoxelMasks):
        masks = VoxelMasks.from_dense(masks)
    (m, v), inst, vox = masks.shape, masks.rows, masks.cols
    point_idx = inverse_map[:, None].expand(-1, 3)
    inf = torch.full((v, 3), float("inf"), dtype=xyz.dtype, device=xyz.device)
    voxel_lo = inf.scatter_reduce(0, point_idx, xyz, "amin")
    voxel_hi = (-inf).scatter_reduce(0, point_idx, xyz, "amax")
    voxel_sum = torch.zeros((v, 3), dtype=xyz.dtype, device=xyz.device).index_add_(0, inverse_map, xyz)
    voxel_count = torch.bincount(inverse_map, minlength=v).to(xyz.dtype)
    idx = inst[:, None].expand(-1, 3)
    lo = torch.full((m, 3), float("inf"), dtype=xyz.dtype, device=xyz.device)
    lo = lo.scatter_reduce(0, idx, voxel_lo[vox], "amin")
    hi = torch.full((m, 3), float("-inf"), dtype=xyz.dtype, device=xyz.device)
    hi = hi.scatter_reduce(0, idx, voxel_hi[vox], "amax")
    sums = torch.zeros((m, 3), dtype=xyz.dtype, device=xyz.device).index_add_(0, inst, voxel_sum[vox])
    counts = torch.zeros(m, dtype=xyz.dtype, device=xyz.device).index_add_(0, inst, voxel_count[vox]).clamp(min=1)
    return torch.stack([lo, hi], dim=1), sums / counts[:, None]


class Segmenter:
    """Mask3D + student + CLIP text encoder; ``segment(cloud, vocabulary) -> Instances``."""

    def __init__(self, mask3d: Mask3D, student: Student, clip: ClipModel | TextEncoder,
                 cfg: SegmenterConfig = SegmenterConfig(), device: str | torch.device = "auto"):
        text = clip if isinstance(clip, TextEncoder) else TextEncoder(clip)
        if student.cfg.out_dim != text.embed_dim:
            raise ValueError(f"student embeds into {student.cfg.out_dim}-d but the CLIP model's "
                             f"embedding size is {text.embed_dim}: they were not trained together")
        feat_dim = mask3d.cfg.hidden_dim if cfg.point_features == "mask" else mask3d.cfg.backbone.planes[-1]
        if student.cfg.in_dim != feat_dim:
            raise ValueError(f"student pools {student.cfg.in_dim}-d features but Mask3D's "
                             f"{cfg.point_features!r} features are {feat_dim}-d")
        self.device = resolve_device(device)
        self.mask3d = mask3d.to(self.device).eval()
        self.student = student.to(self.device).eval()
        self.text = text
        self.cfg = cfg

    @property
    def clip(self) -> ClipModel:
        """The CLIP model (loaded now when the text so far came from the store: :class:`TextEncoder`)."""
        return self.text.clip

    @classmethod
    def from_bundle(cls, path: str | Path, device: str | torch.device = "auto", sparse_backend: str = "torch",
                    files: Mapping[str, str | Path] | None = None, allow_unsafe: bool = False,
                    text_store: str | Path | None = None, **overrides) -> "Segmenter":
        """Load a model bundle (see :mod:`folk_ros.core.bundle`); ``overrides`` replace config fields.

        ``sparse_backend``: ``"torch" | "minkowski" | "auto"`` for the Mask3D backbone
        (:func:`folk_ros.core.sparse.minkowski.set_sparse_backend`; ImportError naming the build
        script when MinkowskiEngine is asked for and absent).

        ``files``: ``{"mask3d" | "student": checkpoint path, "clip": open_clip folder or any
        ``ClipModel`` name}`` used instead of the bundle's file, e.g. the official Mask3D checkpoint
        or your own student. They are not in the manifest, so no sha256 check; a file that does not
        fit the rest (feature or embedding sizes) is one ValueError naming both sides. A student
        checkpoint from ``training.distill.train`` brings its own temperature.

        ``allow_unsafe``: load checkpoints that need full unpickling (can run code from the file; only for
        files you trust). By default only weights are loaded (:mod:`folk_ros.core.checkpoint_io`).

        ``text_store``: a folder of text embeddings kept between runs (:class:`TextEmbeddingStore`, keyed by
        the CLIP's sha256 in the manifest; the bundle's own ``text_cache/`` is read too). With one, an
        open_clip folder is loaded only when a vocabulary needs it (:attr:`text`); None: CLIP is loaded here.
        """
        files = dict(files or {})
        unknown = sorted(set(files) - {"mask3d", "clip", "student"})
        if unknown:
            raise ValueError(f"files: unknown keys {unknown}; use mask3d, clip or student")
        manifest = read_manifest(path)
        dev = resolve_device(device)
        mask3d, _ = load_checkpoint(files.get("mask3d") or manifest.path("mask3d"), map_location=dev,
                                    allow_unsafe=allow_unsafe)
        set_sparse_backend(mask3d, sparse_backend)
        student_obj = load_weights(files.get("student") or manifest.path("student"), "cpu", allow_unsafe,
                                   what="student checkpoint")
        student = Student.from_checkpoint(student_obj)
        text = _text_encoder(manifest, files.get("clip"), dev, text_store)
        cfg = manifest.segmenter                           # stored whole by training.make_bundle
        if "student" in files:                             # another student brings its own temperature
            cfg = replace(cfg, temperature=float(student_obj.get("tau", cfg.temperature)))
        return cls(mask3d, student, text, replace(cfg, **overrides), device=dev)

    def text_embeddings(self, vocabulary: Sequence[str]) -> torch.Tensor:
        """(K, C) unit-norm text embeddings (:class:`TextEncoder`: the store, else CLIP)."""
        return self.text.encode(validate_vocabulary(vocabulary), self.cfg.prompt_template).to(self.device)

    @property
    def input_features(self) -> str:
        """What the bundle's Mask3D reads per point: ``"xyzrgb"`` (trained on colour) or ``"xyz"`` (geometry only:
        colourless clouds, e.g. LiDAR, are what it was trained for; colours are ignored)."""
        return self.mask3d.cfg.input_features

    @property
    def embedding_space(self) -> str:
        """sha256 of the student's weights: embeddings (and saved maps) of one space are comparable."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.student.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

    def embed(self, cloud: PointCloud) -> EmbeddedProposals:
        """Class-agnostic Mask3D proposals of ``cloud`` with their student embeddings (Eq. 7), no text.

        Proposals under ``min_points`` are dropped; nothing is filtered by score. Raises
        CloudTooSmallError for a cloud inside one coarsest Mask3D cell.
        """
        t0 = time.perf_counter()
        if len(cloud) == 0:
            return EmbeddedProposals(VoxelMasks.empty(), np.zeros(0, np.int64), np.zeros(0, np.float32),
                                     np.zeros((0, self.text.embed_dim), np.float32), {})
        proposals = self.mask3d.predict(cloud.xyz, cloud.rgb, point_features=self.cfg.point_features,
                                        post=self.cfg.proposal_postprocess())   # drops those under min_points
        voxel_masks, scores = proposals.voxel_masks, proposals.scores
        t1 = time.perf_counter()
        with torch.inference_mode():   # pooled per voxel: every point of a voxel has its features (Eq. 7)
            embeddings = self.student.embed_voxels(proposals.voxel_features.to(self.device),
                                                   voxel_masks.to(self.device), proposals.voxel_points)
        t2 = time.perf_counter()
        return EmbeddedProposals(voxel_masks.to("cpu"), proposals.inverse_map.cpu().numpy(),
                                 scores.float().cpu().numpy(), embeddings.float().cpu().numpy(),
                                 {"proposals": (t1 - t0) * 1e3 - proposals.postprocess_ms,
                                  "postprocess": proposals.postprocess_ms, "student": (t2 - t1) * 1e3})

    def segment(self, cloud: PointCloud, vocabulary: Sequence[str]) -> Instances:
        """Label the instances of ``cloud`` with names from ``vocabulary`` (see module docstring)."""
        names = validate_vocabulary(vocabulary)
        t_start = time.perf_counter()
        text = self.text_embeddings(names)
        timings = {"text": (time.perf_counter() - t_start) * 1e3}
        if len(cloud) == 0:
            return self._empty(names, len(cloud), text.shape[1], timings)
        embedded = self.embed(cloud)
        timings.update(embedded.timings)
        t0 = time.perf_counter()
        with torch.inference_mode():
            embeddings = torch.from_numpy(embedded.embeddings).to(self.device)
            prop_scores = torch.from_numpy(embedded.proposal_scores).to(self.device)
            label_probs, labels = classify(embeddings, text, self.cfg.temperature)
            scores = prop_scores * label_probs
            order = torch.argsort(scores, descending=True)
            order = order[scores[order] >= self.cfg.score_threshold][: self.cfg.max_instances]
            voxel_masks = embedded.voxel_masks.select(order.cpu())             # geometry on the host
            inverse = torch.from_numpy(embedded.inverse_map)
            boxes, centroids = mask_geometry(torch.from_numpy(cloud.xyz), voxel_masks, inverse)
        timings["classify"] = (time.perf_counter() - t0) * 1e3
        timings["total"] = (time.perf_counter() - t_start) * 1e3
        return Instances(
            voxel_masks=voxel_masks, inverse_map=embedded.inverse_map,
            label_indices=labels[order].cpu().numpy().astype(np.int64),
            scores=scores[order].float().cpu().numpy(), label_probs=label_probs[order].float().cpu().numpy(),
            proposal_scores=prop_scores[order].float().cpu().numpy(),
            embeddings=embeddings[order].float().cpu().numpy(), boxes=boxes.float().cpu().numpy(),
            centroids=centroids.float().cpu().numpy(), vocabulary=names, timings=timings)

    @staticmethod
    def _empty(names: tuple[str, ...], n: int, dim: int, timings: dict[str, float]) -> Instances:
        timings["total"] = sum(timings.values())
        f32 = np.zeros(0, np.float32)
        return Instances(voxel_masks=VoxelMasks.empty(), inverse_map=np.zeros(n, np.int64),
                         label_indices=np.zeros(0, np.int64), scores=f32,
                         label_probs=f32, proposal_scores=f32, embeddings=np.zeros((0, dim), np.float32),
                         boxes=np.zeros((0, 2, 3), np.float32), centroids=np.zeros((0, 3), np.float32),
                         vocabulary=names, timings=timings)
