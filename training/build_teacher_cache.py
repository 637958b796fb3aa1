"""Build the teacher cache: per scene, the FOLK teacher's per-instance per-view CLIP embeddings.

    python -m training.build_teacher_cache --scenes DIR [DIR ...] --out DIR
        [--clip local-dir:PATH | --clip-config folk-tiny-vit] [--mask3d CKPT]
        [--workers W] [--every 10] [--bag] [--device auto]

``--scenes`` takes scene folders in ScanNet's layout, or folders holding them (e.g. the output
of ``python -m training.data.synthetic``). For each scene (:func:`build_scene`):

1. the cloud: the mesh vertices (ScanNet layout), or with ``--bag`` the last fused cloud of
   the scene's ROS 2 bag ``<root>/bags/<scene_id>`` (``root`` = the scene folder's parent);
2. proposals: Mask3D's (``--mask3d CKPT``, class-agnostic, scores from the model) or the GT
   instances (score 1; wall/floor/ceiling left out, ``--keep-structure`` keeps them). A bag's
   cloud has no GT of its own: without ``--mask3d`` each cloud point takes the instance of its
   nearest mesh vertex within ``--transfer-distance`` (0.05 m; farther points: none), so
   ``--bag`` without ``--mask3d`` needs the scene folder's mesh;
3. frames: every ``--every``-th frame of ``color/ depth/ pose/`` or of the bag;
4. the teacher (:class:`training.teacher.teacher.Teacher`): visible counts, Eq. 1 views,
   completion, CLIP dense features, mask pooling.

Output: ``<out>/<scene_id>.teacher.safetensors``, one file per scene; tensors (below) plus a
JSON header entry (:data:`META_KEY`) with the scene id, source, the config and its hash, label
names and the per-stage timings. Tensors::

    view_embeddings (V, C) float32   view_instance (V,) int64   view_frame (V,) int64 (Frame.index)
    visible_counts (M, F) int32      frame_ids (F,) int64
    proposal_indices (S,) int32 + proposal_offsets (M+1,) int64: proposal m's point indices are
        proposal_indices[offsets[m]:offsets[m+1]] (compact (M, N) masks)
    proposal_scores (M,) float32     proposal_label_ids (M,) int64 (ScanNet200 id, GT only; else -1)
    proposal_gt_instance (M,) int64 (GT instance id, GT only; else -1)
    points (N, 3) float32, colors (N, 3) uint8: the cloud the proposals index

Each file is written to a temp name and renamed (atomic). A scene whose file exists with the
same config hash (teacher config + variant + CLIP id + Mask3D id + frame stride + source) is
skipped, so a killed run resumes where it stopped; stale temp files are removed. Scenes run in
parallel ``spawn`` worker processes that each load CLIP (and Mask3D) once; ``--workers 1``
runs inline. One builder per output folder at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from folk_ros.core.bundle import file_sha256
from training.atomic import atomic_path, write_json_atomic
from training.data import scannet200
from training.teacher.config import TeacherConfig
from training.teacher.teacher import Teacher, TeacherVariant

log = logging.getLogger(__name__)

CACHE_FORMAT = "folk-teacher-cache-v1"
CACHE_SUFFIX = ".teacher.safetensors"
META_KEY = "folk_teacher_cache"
STRUCTURE_LABELS = ("wall", "floor", "ceiling")  # room shell: not GT proposals unless asked
BAG_DIR = "bags"


# --------------------------------------------------------------------------- scenes and frames


def is_scene_dir(path: Path) -> bool:
    """A ScanNet-layout scene folder: it holds a ``*_vh_clean_2.ply`` mesh."""
    return path.is_dir() and any(path.glob("*_vh_clean_2.ply"))


def find_scenes(dirs: list[Path]) -> list[Path]:
    """Scene folders among ``dirs`` (each a scene, or a folder of scenes), sorted, deduplicated."""
    found: list[Path] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ValueError(f"{d} is not a folder")
        if is_scene_dir(d):
            found.append(d)
        else:
            subs = sorted(p for p in d.iterdir() if p.name != BAG_DIR and is_scene_dir(p))
            if not subs:
                raise ValueError(f"{d} is neither a scene folder (no *_vh_clean_2.ply) nor a folder of scenes")
            found.extend(subs)
    return unique_paths(found)


def unique_paths(paths: list[Path]) -> list[Path]:
    """``paths`` in order, without repeats of the same file or folder (compared resolved)."""
    out, seen = [], set()
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


def scene_bag(scene_dir: Path) -> Path:
    """``<root>/bags/<scene_id>`` for ``<root>/<scene_id>``."""
    return Path(scene_dir).parent / BAG_DIR / Path(scene_dir).name


class FolderFrames:
    """Re-iterable frames of a ScanNet-layout folder (every ``every``-th), read on each pass."""

    def __init__(self, scene_dir: Path, every: int) -> None:
        self.scene_dir, self.every = Path(scene_dir), every

    def __iter__(self):
        from training.data.scannet import read_frames
        return read_frames(self.scene_dir, every=self.every)


class BagFrames:
    """Re-iterable frames of a ROS 2 bag (every ``every``-th colour image), read on each pass."""

    def __init__(self, bag: Path, every: int) -> None:
        self.bag, self.every = Path(bag), every

    def __iter__(self):
        from training.data.rosbag_io import read_bag_frames
        return read_bag_frames(self.bag, every=self.every)


# --------------------------------------------------------------------------- proposals


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
    from scipy.spatial import cKDTree
    dist, idx = cKDTree(np.asarray(mesh_vertices, np.float64)).query(np.asarray(points, np.float64),
                                                                     distance_upper_bound=max_distance)
    found = np.isfinite(dist)
    out = np.zeros(len(points), np.int64)
    out[found] = np.asarray(mesh_instances, np.int64)[idx[found]]
    return out


# --------------------------------------------------------------------------- configuration


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


# --------------------------------------------------------------------------- cache files


def cache_path(out_dir: Path, scene_id: str) -> Path:
    return Path(out_dir) / f"{scene_id}{CACHE_SUFFIX}"


def read_cache_meta(path: Path) -> dict | None:
    """The JSON metadata of a cache file, or None when it is missing or unreadable."""
    from safetensors import safe_open
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
    from safetensors.numpy import save_file
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
    """Read a file written by :func:`build_scene`."""
    from safetensors.numpy import load_file
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


# --------------------------------------------------------------------------- one scene


@dataclass
class BuildContext:
    """What a worker loads once: the teacher (with CLIP), Mask3D (or None), the config and hash."""

    cfg: BuildConfig
    chash: str
    identity: dict
    teacher: Teacher
    mask3d: object | None


def make_context(cfg: BuildConfig, identity: dict | None = None, clip=None) -> BuildContext:
    """Load CLIP (unless an already loaded ``clip`` that matches ``cfg`` is given) and Mask3D."""
    from folk_ros.core.clip import ClipModel
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if clip is None:
        clip = (ClipModel(cfg.clip, device=cfg.device) if cfg.clip is not None
                else ClipModel.from_config(cfg.clip_config, device=cfg.device, seed=0))
    mask3d = None
    if cfg.mask3d is not None:
        from folk_ros.core.mask3d.checkpoint import load_checkpoint
        mask3d, _ = load_checkpoint(cfg.mask3d, map_location=clip.device)
    identity = identity or hashed_config(cfg)
    return BuildContext(cfg, config_hash(identity), identity, Teacher(clip, cfg.teacher, cfg.variant), mask3d)


def _scene_cloud(scene_dir: Path, cfg: BuildConfig):
    """(scene_id, points (N, 3), colors (N, 3) uint8, mesh or None, frames re-iterable)."""
    from training.data.scannet import read_scene_mesh, scene_id_of
    sid = scene_id_of(scene_dir)
    if not cfg.bag:
        mesh = read_scene_mesh(scene_dir)
        return sid, mesh.vertices, mesh.colors, mesh, FolderFrames(scene_dir, cfg.every)
    from training.data.rosbag_io import read_bag_clouds
    bag = scene_bag(scene_dir)
    if not bag.exists():
        raise FileNotFoundError(f"--bag: no bag at {bag}")
    last = None
    for last in read_bag_clouds(bag):
        pass
    if last is None:
        raise ValueError(f"{bag} holds no fused cloud")
    mesh = read_scene_mesh(scene_dir) if cfg.mask3d is None else None
    return sid, last[1], last[2], mesh, BagFrames(bag, cfg.every)


def build_scene(scene_dir: Path, out_dir: Path, ctx: BuildContext, force: bool = False) -> dict:
    """Build (or skip) one scene's cache file; returns {"scene_id", "status", "seconds", ...}."""
    from training.data.scannet import scene_id_of
    cfg, t0 = ctx.cfg, time.perf_counter()
    sid = scene_id_of(scene_dir)
    path = cache_path(out_dir, sid)
    if not force and is_current(path, ctx.chash):
        return {"scene_id": sid, "status": "skipped", "seconds": 0.0}
    remove_stale_temps(out_dir, sid)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    sid, points, colors, mesh, frames = _scene_cloud(Path(scene_dir), cfg)
    timings["read_scene"] = time.perf_counter() - t
    t = time.perf_counter()
    skip = () if cfg.keep_structure else STRUCTURE_LABELS
    if ctx.mask3d is not None:
        props = mask3d_proposals(ctx.mask3d, points, colors)
    elif cfg.bag:
        ids = transfer_instances(mesh.vertices, mesh.instance_ids, points, cfg.transfer_distance)
        props = gt_proposals(ids, mesh.instance_labels, skip)
    else:
        props = gt_proposals(mesh.instance_ids, mesh.instance_labels, skip)
    timings["proposals"] = time.perf_counter() - t
    res = ctx.teacher.embed(points, props.masks, frames)
    timings.update(res.timings)
    t = time.perf_counter()
    indices, offsets = compact_masks(props.masks)
    tensors = {
        "view_embeddings": res.view_embeddings.astype(np.float32), "view_instance": res.view_instance,
        "view_frame": res.view_frame, "visible_counts": res.visible_counts.astype(np.int32),
        "frame_ids": res.frame_ids, "proposal_indices": indices, "proposal_offsets": offsets,
        "proposal_scores": props.scores.astype(np.float32), "proposal_label_ids": props.label_ids,
        "proposal_gt_instance": props.gt_instance, "points": np.asarray(points, np.float32),
        "colors": np.asarray(colors, np.uint8),
    }
    meta = {"format": CACHE_FORMAT, "scene_id": sid, "scene_dir": str(scene_dir), "config_hash": ctx.chash,
            "config": ctx.identity, "proposals": "mask3d" if ctx.mask3d is not None else "gt",
            "proposal_labels": props.labels, "num_points": int(len(points)), "num_instances": int(len(props.scores)),
            "num_views": res.num_views, "num_frames": int(len(res.frame_ids)),
            "embed_dim": int(res.view_embeddings.shape[1]), "clip": ctx.teacher.clip.description,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "timings": timings}
    write_cache(path, tensors, meta)
    timings["write"] = time.perf_counter() - t
    return {"scene_id": sid, "status": "built", "seconds": time.perf_counter() - t0, "views": res.num_views,
            "instances": int(len(props.scores)), "timings": timings}


# --------------------------------------------------------------------------- workers


_WORKER: BuildContext | None = None  # the one context of a worker process (set by _init_worker)


def _init_worker(cfg: BuildConfig, identity: dict) -> None:
    global _WORKER
    _WORKER = make_context(cfg, identity)


def _run_in_worker(scene_dir: str, out_dir: str, force: bool) -> dict:
    assert _WORKER is not None, "worker not initialised"
    return build_scene(Path(scene_dir), Path(out_dir), _WORKER, force)


def build_cache(scenes: list[Path], out_dir: Path, cfg: BuildConfig, workers: int = 1, force: bool = False,
                progress: bool = True, clip=None) -> dict:
    """Build the cache of ``scenes`` into ``out_dir``; returns a summary (built, skipped, failed).

    ``clip``: an already loaded :class:`ClipModel` matching ``cfg`` to use inline (``workers == 1``);
    worker processes always load their own.
    """
    from training.data.scannet import scene_id_of
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = hashed_config(cfg)
    chash = config_hash(identity)
    pending = [s for s in scenes if force or not is_current(cache_path(out_dir, scene_id_of(s)), chash)]
    results = [{"scene_id": scene_id_of(s), "status": "skipped", "seconds": 0.0} for s in scenes if s not in pending]
    bar = tqdm(total=len(scenes), initial=len(results), desc="teacher cache", unit="scene", disable=not progress)
    failed = []

    def record(scene: Path, fn):
        try:
            results.append(fn())
        except Exception as e:  # one bad scene must not stop the run; reported at the end
            log.error("%s: %s: %s", scene, type(e).__name__, e)
            failed.append({"scene": str(scene), "error": f"{type(e).__name__}: {e}"})
        bar.update()

    if pending and workers == 1:
        ctx = make_context(cfg, identity, clip)
        for s in pending:
            record(s, lambda s=s: build_scene(s, out_dir, ctx, force))
    elif pending:
        wcfg = replace(cfg, threads=cfg.threads or max(1, (os.cpu_count() or 1) // workers))
        with ProcessPoolExecutor(min(workers, len(pending)), mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(wcfg, identity)) as pool:
            futures = {pool.submit(_run_in_worker, str(s), str(out_dir), force): s for s in pending}
            for fut in as_completed(futures):
                record(futures[fut], fut.result)
    bar.close()
    results.sort(key=lambda r: r["scene_id"])
    return {"config_hash": chash, "config": identity, "out": str(out_dir),
            "built": sum(r["status"] == "built" for r in results),
            "skipped": sum(r["status"] == "skipped" for r in results), "failed": failed, "scenes": results}


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.build_teacher_cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=Path, nargs="+", required=True, help="scene folders or folders of scenes")
    p.add_argument("--out", type=Path, required=True, help="cache folder")
    clip = p.add_mutually_exclusive_group()
    clip.add_argument("--clip", help="CLIP weights, e.g. local-dir:models/clip")
    clip.add_argument("--clip-config", help="RANDOM-weight CLIP of this architecture (plumbing only)")
    p.add_argument("--mask3d", help="Mask3D checkpoint for proposals (default: GT instances)")
    p.add_argument("--workers", type=int, default=1, help="parallel scene processes (1 = inline)")
    p.add_argument("--every", type=int, default=TeacherConfig.frame_stride, help="frame stride")
    p.add_argument("--bag", action="store_true", help="read frames and the cloud from <root>/bags/<scene_id>")
    p.add_argument("--keep-structure", action="store_true", help="keep wall/floor/ceiling GT proposals")
    p.add_argument("--transfer-distance", type=float, default=0.05, help="metres, --bag GT label transfer")
    p.add_argument("--views", choices=("multi", "topk"), default="multi", help="Eq. 1 or plain top-k_pre")
    p.add_argument("--mask", choices=("completed", "sparse"), default="completed", help="mask completion on/off")
    p.add_argument("--embedding", choices=("mask_pool", "bbox_crop"), default="mask_pool")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--force", action="store_true", help="rebuild scenes that are up to date")
    args = p.parse_args(argv)
    if args.workers < 1 or args.every < 1:
        p.error("--workers and --every must be >= 1")
    if args.clip is None and args.clip_config is None:
        p.error("give --clip local-dir:PATH (trained weights) or --clip-config NAME (random weights, plumbing)")
    return args


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the summary it prints (also ``<out>/build_summary.json``)."""
    args = parse_args(argv)
    cfg = BuildConfig(clip=args.clip, clip_config=args.clip_config, mask3d=args.mask3d, every=args.every,
                      bag=args.bag, keep_structure=args.keep_structure, transfer_distance=args.transfer_distance,
                      teacher=TeacherConfig(frame_stride=args.every),
                      variant=TeacherVariant(args.views, args.mask, args.embedding), device=args.device)
    summary = build_cache(find_scenes(args.scenes), args.out, cfg, args.workers, args.force)
    write_json_atomic(args.out / "build_summary.json", summary)
    print(f"teacher cache {args.out}: {summary['built']} built, {summary['skipped']} skipped, "
          f"{len(summary['failed'])} failed (config {summary['config_hash']})")
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(1 if main()["failed"] else 0)
