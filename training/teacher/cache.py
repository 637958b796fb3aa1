"""The teacher cache: per scene, the FOLK teacher's per-instance per-view CLIP embeddings, in one
safetensors file with a JSON header entry (:data:`META_KEY`) holding the scene id, the config that built it
and its hash, label names and the per-stage timings. Tensors::

    view_embeddings (V, C) float32   view_instance (V,) int64   view_frame (V,) int64 (Frame.index)
    visible_counts (M, F) int32      frame_ids (F,) int64
    proposal_indices (S,) int32 + proposal_offsets (M+1,) int64: proposal m's point indices are
        proposal_indices[offsets[m]:offsets[m+1]] (compact (M, N) masks)
    proposal_scores (M,) float32     proposal_label_ids (M,) int64 (ScanNet200 id, GT only; else -1)
    proposal_gt_instance (M,) int64 (GT instance id, GT only; else -1)
    points (N, 3) float32, colors (N, 3) uint8: the cloud the proposals index

A file is current when its config hash (teacher config + variant + CLIP id + Mask3D id + frame stride +
source: :func:`hashed_config`) equals the build's. Written by ``python -m training.build_teacher_cache``,
read by distillation (:mod:`training.distill.features`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from folk_ros.core.bundle import file_sha256
from training.atomic import atomic_path
from training.teacher.config import TeacherConfig, TeacherVariant

CACHE_FORMAT = "folk-teacher-cache-v1"
CACHE_SUFFIX = ".teacher.safetensors"
META_KEY = "folk_teacher_cache"


@dataclass(frozen=True)
class BuildConfig:
    """What a cache is built with; everything but ``device``/``threads`` goes into the hash.

    Attributes:
        clip: ``local-dir:PATH`` (or another :class:`ClipModel` name) or None.
        clip_config: architecture of a RANDOM-weight CLIP (plumbing, tests) when ``clip`` is None.
        mask3d: Mask3D checkpoint path, or None for GT proposals.
        every: frame stride.
        bag: read frames and cloud from the scene's bag.
        keep_structure: keep wall/floor/ceiling GT instances as proposals.
        transfer_distance: metres, bag cloud -> mesh vertex label transfer radius.
        teacher: teacher settings; variant: ablation switches.
        device: 'auto', 'cpu' or 'cuda'; threads: torch threads per worker (0 = torch's default).
    """

    clip: str | None = None
    clip_config: str | None = "folk-tiny-vit"
    mask3d: str | None = None
    every: int = 10
    bag: bool = False
    keep_structure: bool = False
    transfer_distance: float = 0.05
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    variant: TeacherVariant = field(default_factory=TeacherVariant)
    device: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        if (self.clip is None) == (self.clip_config is None):
            raise ValueError("give exactly one of clip (weights) and clip_config (random weights)")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.transfer_distance <= 0:
            raise ValueError(f"transfer_distance must be > 0 metres, got {self.transfer_distance}")


def clip_identity(cfg: BuildConfig) -> str:
    """A string that changes when the CLIP weights change (sha256 of a folder's weight files)."""
    if cfg.clip is None:
        return f"random:{cfg.clip_config}:seed=0"
    if cfg.clip.startswith("local-dir:"):
        folder = Path(cfg.clip[len("local-dir:"):]).expanduser()
        files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".pth", ".pt", ".json"))
        if not files:
            raise ValueError(f"CLIP folder {folder} holds no weights")
        return "local-dir:" + hashlib.sha256("".join(file_sha256(p) for p in files).encode()).hexdigest()[:16]
    return cfg.clip


def mask3d_identity(cfg: BuildConfig) -> str:
    if cfg.mask3d is None:
        return "gt"
    path = Path(cfg.mask3d)
    if not path.is_file():
        raise ValueError(f"no Mask3D checkpoint at {path}")
    return "mask3d:" + file_sha256(path)[:16]


def hashed_config(cfg: BuildConfig) -> dict:
    """The JSON-ready identity of a build (what :func:`config_hash` hashes)."""
    return {"format": CACHE_FORMAT, "teacher_config": asdict(cfg.teacher), "variant": asdict(cfg.variant),
            "clip": clip_identity(cfg), "mask3d": mask3d_identity(cfg), "every": cfg.every,
            "source": "bag" if cfg.bag else "scannet", "keep_structure": cfg.keep_structure,
            "transfer_distance": cfg.transfer_distance if cfg.bag and cfg.mask3d is None else None}


def config_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(out_dir: Path, scene_id: str) -> Path:
    return Path(out_dir) / f"{scene_id}{CACHE_SUFFIX}"


def read_cache_meta(path: Path) -> dict | None:
    """The JSON metadata of a cache file, or None when it is missing or unreadable."""
    try:
        with safe_open(str(path), framework="np") as f:
            return json.loads((f.metadata() or {})[META_KEY])
    except Exception:  # missing key, bad JSON, truncated file: safetensors raises its own error types
        return None


def is_current(path: Path, chash: str) -> bool:
    """True when ``path`` holds a complete cache built with config hash ``chash``."""
    meta = read_cache_meta(path) if Path(path).is_file() else None
    return meta is not None and meta.get("config_hash") == chash


def remove_stale_temps(out_dir: Path, scene_id: str) -> int:
    """Delete temp files a killed run left for ``scene_id``; returns how many."""
    n = 0
    for p in Path(out_dir).glob(f".{scene_id}{CACHE_SUFFIX}.*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def write_cache(path: Path, tensors: dict[str, np.ndarray], meta: dict) -> None:
    """Write tensors + JSON metadata to ``path`` atomically (temp file in the same folder + rename)."""
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
                  metadata={META_KEY: json.dumps(meta)})


@dataclass
class TeacherCache:
    """One scene's cache file, loaded (field docs: module docstring)."""

    meta: dict
    view_embeddings: np.ndarray
    view_instance: np.ndarray
    view_frame: np.ndarray
    visible_counts: np.ndarray
    frame_ids: np.ndarray
    proposal_indices: np.ndarray
    proposal_offsets: np.ndarray
    proposal_scores: np.ndarray
    proposal_label_ids: np.ndarray
    proposal_gt_instance: np.ndarray
    points: np.ndarray
    colors: np.ndarray

    @property
    def scene_id(self) -> str:
        return self.meta["scene_id"]

    @property
    def num_instances(self) -> int:
        return int(self.proposal_scores.shape[0])

    def proposal_masks(self) -> np.ndarray:
        """(M, N) bool proposal masks, rebuilt from the compact indices."""
        m, n = self.num_instances, int(self.points.shape[0])
        rows = np.repeat(np.arange(m), np.diff(self.proposal_offsets))
        out = np.zeros((m, n), dtype=bool)
        out[rows, self.proposal_indices] = True
        return out


def load_teacher_cache(path: str | os.PathLike) -> TeacherCache:
    """Read a file written by :func:`training.build_teacher_cache.build_scene`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no teacher cache at {path}")
    meta = read_cache_meta(path)
    if meta is None or meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not a {CACHE_FORMAT} file")
    t = load_file(str(path))
    return TeacherCache(meta=meta, **{k: t[k] for k in TeacherCache.__dataclass_fields__ if k != "meta"})


def compact_masks(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, N) bool -> (indices (S,) int32, offsets (M+1,) int64), rows concatenated."""
    rows, cols = np.nonzero(masks)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=masks.shape[0]))]).astype(np.int64)
    return cols.astype(np.int32), offsets
