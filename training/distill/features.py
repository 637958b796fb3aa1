"""The student's fixed inputs: per-proposal pooled Mask3D point features, cached per scene (Eq. 7).

    python -m training.distill.features --cache DIR [DIR ...] --mask3d CKPT
        [--out DIR] [--point-features backbone|mask] [--device auto] [--threads N]

Mask3D is frozen during distillation, so the first half of the student (paper Eq. 7: the mean of
the point features inside each proposal) is a constant of the scene. It is computed once per
teacher-cache file (:mod:`training.teacher.cache`) by running the frozen Mask3D
(``Mask3D.predict(points, colors, point_features=kind)``) on the cache's cloud and pooling the
features over the cache's proposals with :func:`folk_ros.core.student.masked_mean`; the trainer
then runs only the MLP (``Student.project``) on the pooled rows.

Output: ``<scene_id>.features.safetensors`` next to ``<scene_id>.teacher.safetensors`` (or in
``--out``). Tensors::

    pooled (M, D) float32      mean point feature of each proposal (zeros where has_points is False)
    has_points (M,) bool       the proposal holds at least one point (an empty one has no mean)

plus JSON metadata (format, scene id, Mask3D checkpoint sha256, point-feature kind, a digest of
the cloud and proposals it was computed from, timings). A file is reused only when all three
(Mask3D sha256, kind, source digest) match; otherwise it is recomputed, so a new Mask3D
checkpoint, ``--point-features mask`` or a rebuilt teacher cache never feeds stale features.
Files are written and read with the teacher cache's own helpers (``write_cache``: temp file in
the same folder + rename, so atomic; ``read_cache_meta``), the format field telling them apart.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from tqdm import tqdm

from folk_ros.core.bundle import file_sha256
from folk_ros.core.clip import resolve_device
from folk_ros.core.mask3d.checkpoint import load_checkpoint
from folk_ros.core.student import masked_mean
from training.data.scenes import unique_paths
from training.teacher.cache import CACHE_SUFFIX, TeacherCache, load_teacher_cache, read_cache_meta, write_cache

log = logging.getLogger(__name__)

FEATURES_FORMAT = "folk-student-features-v1"
FEATURES_SUFFIX = ".features.safetensors"
POINT_FEATURE_KINDS = ("backbone", "mask")


@dataclass
class SceneFeatures:
    """One scene's pooled proposal features (shapes: module docstring)."""

    meta: dict
    pooled: np.ndarray
    has_points: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.pooled.shape[1])


def find_teacher_caches(paths: list[str | os.PathLike]) -> list[Path]:
    """Teacher-cache files among ``paths`` (files, or folders holding ``*.teacher.safetensors``), sorted.

    Raises:
        ValueError: a path that does not exist, or a folder without cache files.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file() and p.name.endswith(CACHE_SUFFIX):
            found.append(p)
        elif p.is_dir():
            files = sorted(p.glob(f"*{CACHE_SUFFIX}"))
            if not files:
                raise ValueError(f"{p} holds no *{CACHE_SUFFIX} files (build them with "
                                 "python -m training.build_teacher_cache)")
            found.extend(files)
        else:
            raise ValueError(f"{p} is neither a folder nor a *{CACHE_SUFFIX} file")
    return unique_paths(found)


def source_digest(cache: TeacherCache) -> str:
    """Hash of what the pooled features depend on in the teacher cache: cloud and proposals."""
    h = hashlib.sha256()
    for a in (cache.points, cache.colors, cache.proposal_offsets, cache.proposal_indices):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def pool_proposals(point_features: torch.Tensor, indices: np.ndarray | torch.Tensor,
                   offsets: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7 pooling of the cache's compact proposals, all at once.

    Args:
        point_features: (N, D) float Mask3D point features.
        indices: (S,) int point indices of all proposals, concatenated.
        offsets: (M+1,) int; proposal m is ``indices[offsets[m]:offsets[m+1]]``.

    Returns:
        pooled (M, D) float (zeros for empty proposals), has_points (M,) bool.
    """
    dev = point_features.device
    offsets = torch.as_tensor(np.asarray(offsets), dtype=torch.long, device=dev)
    indices = torch.as_tensor(np.asarray(indices), device=dev).long()
    if offsets.ndim != 1 or len(offsets) < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != len(indices):
        raise ValueError(f"offsets must be (M+1,) from 0 to len(indices)={len(indices)}")
    counts = offsets.diff()
    if bool((counts < 0).any()):
        raise ValueError("offsets must be non-decreasing")
    m, (n, d) = len(counts), point_features.shape
    has_points = counts > 0
    pooled = point_features.new_zeros(m, d)
    k = int(has_points.sum())
    if k:
        # (row, point) pairs of the non-empty rows (empty rows hold no indices): one sparse (k, N) matrix
        rows = torch.repeat_interleave(torch.arange(k, device=dev), counts[has_points])
        ones = torch.ones(len(indices), dtype=point_features.dtype, device=dev)
        sel = torch.sparse_coo_tensor(torch.stack([rows, indices]), ones, (k, n), check_invariants=True)
        pooled[has_points] = masked_mean(point_features, sel)
    return pooled, has_points


class FeatureCache:
    """Pooled proposal features of teacher-cache scenes under one frozen Mask3D, computed on demand.

    Args:
        mask3d: Mask3D checkpoint (:func:`folk_ros.core.mask3d.checkpoint.load_checkpoint`).
        point_features: ``"backbone"`` or ``"mask"``, as ``Mask3D.predict`` takes.
        out_dir: folder for the feature files; None puts each next to its teacher cache.
        device: where Mask3D runs ('auto', 'cpu', 'cuda[:N]'); loaded lazily, only when a scene
            needs computing.
    """

    def __init__(self, mask3d: str | os.PathLike, point_features: str = "backbone",
                 out_dir: str | os.PathLike | None = None, device: str | torch.device = "auto") -> None:
        if point_features not in POINT_FEATURE_KINDS:
            raise ValueError(f"point_features must be one of {POINT_FEATURE_KINDS}, got {point_features!r}")
        self.mask3d_path = Path(mask3d)
        if not self.mask3d_path.is_file():
            raise FileNotFoundError(f"no Mask3D checkpoint at {self.mask3d_path}")
        self.mask3d_sha256 = file_sha256(self.mask3d_path)
        self.point_features = point_features
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = resolve_device(device)
        self._model = None

    @property
    def model(self):
        """The frozen Mask3D (eval mode), loaded on first use."""
        if self._model is None:
            self._model, _ = load_checkpoint(self.mask3d_path, map_location=self.device)
            self._model.requires_grad_(False)
        return self._model

    def path_for(self, teacher_path: str | os.PathLike, scene_id: str) -> Path:
        folder = self.out_dir if self.out_dir is not None else Path(teacher_path).parent
        return folder / f"{scene_id}{FEATURES_SUFFIX}"

    def is_current(self, path: Path, digest: str) -> bool:
        """``path`` holds features of this Mask3D and kind, computed from a cache with ``digest``."""
        meta = read_cache_meta(path) if Path(path).is_file() else None
        return (meta is not None and meta.get("format") == FEATURES_FORMAT
                and meta.get("mask3d_sha256") == self.mask3d_sha256
                and meta.get("point_features") == self.point_features and meta.get("source_digest") == digest)

    def compute(self, cache: TeacherCache) -> tuple[np.ndarray, np.ndarray, dict]:
        """(pooled (M, D) float32, has_points (M,) bool, timings) of one scene with the frozen Mask3D."""
        model = self.model
        t0 = time.perf_counter()
        pred = model.predict(cache.points, cache.colors, point_features=self.point_features)
        t1 = time.perf_counter()
        with torch.inference_mode():
            pooled, has_points = pool_proposals(pred.point_features, cache.proposal_indices, cache.proposal_offsets)
        t2 = time.perf_counter()
        return (pooled.float().cpu().numpy(), has_points.cpu().numpy(),
                {"mask3d": t1 - t0, "pool": t2 - t1})

    def get(self, cache: TeacherCache, teacher_path: str | os.PathLike,
            compute: bool = True) -> tuple[SceneFeatures, str]:
        """The scene's features and ``"reused"`` or ``"computed"``.

        Args:
            cache: the loaded teacher cache of the scene.
            teacher_path: its file (locates the feature file when ``out_dir`` is None).
            compute: when False, a missing or stale file raises FileNotFoundError instead of being
                computed (e.g. on the DDP ranks that must only read).
        """
        path = self.path_for(teacher_path, cache.scene_id)
        digest = source_digest(cache)
        if self.is_current(path, digest):
            t = load_file(str(path))
            feats = SceneFeatures(read_cache_meta(path), t["pooled"], t["has_points"].astype(bool))
            if feats.pooled.shape[0] != cache.num_instances:
                raise ValueError(f"{path}: {feats.pooled.shape[0]} rows for {cache.num_instances} proposals")
            return feats, "reused"
        if not compute:
            raise FileNotFoundError(f"no current feature file at {path} (Mask3D {self.mask3d_sha256[:12]}, "
                                    f"{self.point_features})")
        pooled, has_points, timings = self.compute(cache)
        meta = {"format": FEATURES_FORMAT, "scene_id": cache.scene_id, "mask3d": str(self.mask3d_path),
                "mask3d_sha256": self.mask3d_sha256, "point_features": self.point_features,
                "source_digest": digest, "teacher_config_hash": cache.meta.get("config_hash"),
                "num_instances": int(cache.num_instances), "dim": int(pooled.shape[1]),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "timings": timings}
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed run
            stale.unlink(missing_ok=True)
        write_cache(path, {"pooled": pooled, "has_points": has_points}, meta)
        return SceneFeatures(meta, pooled, has_points), "computed"

    def ensure(self, teacher_paths: list[Path], progress: bool = True) -> dict:
        """Compute the feature files that are missing or stale; returns {"computed", "reused", "seconds"}."""
        t0, counts = time.perf_counter(), {"computed": 0, "reused": 0}
        for p in tqdm(teacher_paths, desc="student features", unit="scene", disable=not progress):
            counts[self.get(load_teacher_cache(p), p)[1]] += 1
        return {**counts, "seconds": time.perf_counter() - t0}


def run(argv: list[str] | None = None) -> dict:
    """CLI: precompute the feature files of teacher caches (the trainer also does it on demand)."""
    p = argparse.ArgumentParser(prog="python -m training.distill.features", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", nargs="+", required=True, help="teacher-cache folders or files")
    p.add_argument("--mask3d", required=True, help="frozen Mask3D checkpoint")
    p.add_argument("--out", help="folder for the feature files (default: next to each teacher cache)")
    p.add_argument("--point-features", choices=POINT_FEATURE_KINDS, default="backbone",
                   help="Mask3D features pooled per proposal: backbone or mask")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    fc = FeatureCache(args.mask3d, args.point_features, args.out, args.device)
    summary = fc.ensure(find_teacher_caches(args.cache))
    print(f"student features: {summary['computed']} computed, {summary['reused']} reused "
          f"in {summary['seconds']:.1f} s")
    return summary


def main(argv: list[str] | None = None) -> int:
    """The command line: :func:`run`; 0 when the run completed (errors raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
