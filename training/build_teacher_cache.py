"""Build the teacher cache: per scene, the FOLK teacher's per-instance per-view CLIP embeddings.

    python -m training.build_teacher_cache --scenes DIR [DIR ...] --out DIR
        [--clip local-dir:PATH | --clip-config folk-tiny-vit] [--mask3d CKPT]
        [--workers W] [--every 10] [--bag] [--device auto]
    torchrun --nproc-per-node N -m training.build_teacher_cache ...   (N processes, one device each)

``--scenes`` takes scene folders in ScanNet's layout, or folders holding them (e.g. the output
of ``python -m training.data.synthetic``). For each scene (:func:`build_scene`):

1. the cloud: the mesh vertices (ScanNet layout), or with ``--bag`` the last fused cloud of
   the scene's ROS 2 bag ``<root>/bags/<scene_id>`` (``root`` = the scene folder's parent);
2. proposals (:mod:`training.teacher.proposals`): Mask3D's (``--mask3d CKPT``, class-agnostic,
   scores from the model) or the GT instances (score 1; wall/floor/ceiling left out,
   ``--keep-structure`` keeps them). A bag's cloud has no GT of its own: without ``--mask3d``
   each cloud point takes the instance of its nearest mesh vertex within ``--transfer-distance``
   (0.05 m; farther points: none), so ``--bag`` without ``--mask3d`` needs the scene folder's mesh;
3. frames: every ``--every``-th frame of ``color/ depth/ pose/`` or of the bag;
4. the teacher (:class:`training.teacher.teacher.Teacher`): visible counts, Eq. 1 views,
   completion, CLIP dense features, mask pooling.

Output: ``<out>/<scene_id>.teacher.safetensors``, one file per scene (format:
:mod:`training.teacher.cache`), and ``<out>/build_summary.json``. Each file is written to a temp
name and renamed (atomic). A scene whose file exists with the same config hash is skipped, so a
killed run resumes where it stopped; stale temp files are removed. Scenes run in parallel
``spawn`` worker processes that each load CLIP (and Mask3D) once; ``--workers 1`` runs inline.

Under ``torchrun`` (or any launcher that sets RANK and WORLD_SIZE, e.g. SLURM or Kubernetes), rank
r of W builds every W-th scene from the r-th (of the sorted scene list) on its own device
(cuda:LOCAL_RANK, or the CPU), and the ranks' summaries are merged into one (written by rank 0).
The output folder must be shared by the ranks; one builder (or one torchrun job) per folder at a time.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from folk_ros.core.clip import ClipModel
from folk_ros.core.mask3d.checkpoint import load_checkpoint
from training.atomic import write_json_atomic
from training.data.bag_reader import read_bag_clouds, read_bag_frames
from training.data.scannet import read_frames, read_scene_mesh, scene_id_of
from training.data.scenes import find_scenes, scene_bag
from training.distributed import DistInfo, distributed
from training.teacher.cache import (CACHE_FORMAT, BuildConfig, cache_path, compact_masks, config_hash, hashed_config,
                                    is_current, remove_stale_temps, write_cache)
from training.teacher.config import TeacherConfig, TeacherVariant
from training.teacher.proposals import STRUCTURE_LABELS, gt_proposals, mask3d_proposals, transfer_instances
from training.teacher.teacher import Teacher

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- frames


class FolderFrames:
    """Re-iterable frames of a ScanNet-layout folder (every ``every``-th), read on each pass."""

    def __init__(self, scene_dir: Path, every: int) -> None:
        self.scene_dir, self.every = Path(scene_dir), every

    def __iter__(self):
        return read_frames(self.scene_dir, every=self.every)


class BagFrames:
    """Re-iterable frames of a ROS 2 bag (every ``every``-th colour image), read on each pass."""

    def __init__(self, bag: Path, every: int) -> None:
        self.bag, self.every = Path(bag), every

    def __iter__(self):
        return read_bag_frames(self.bag, every=self.every)


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
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if clip is None:
        clip = (ClipModel(cfg.clip, device=cfg.device) if cfg.clip is not None
                else ClipModel.from_config(cfg.clip_config, device=cfg.device, seed=0))
    mask3d = None
    if cfg.mask3d is not None:
        mask3d, _ = load_checkpoint(cfg.mask3d, map_location=clip.device)
    identity = identity or hashed_config(cfg)
    return BuildContext(cfg, config_hash(identity), identity, Teacher(clip, cfg.teacher, cfg.variant), mask3d)


def _scene_cloud(scene_dir: Path, cfg: BuildConfig):
    """(scene_id, points (N, 3), colors (N, 3) uint8, mesh or None, frames re-iterable)."""
    sid = scene_id_of(scene_dir)
    if not cfg.bag:
        mesh = read_scene_mesh(scene_dir)
        return sid, mesh.vertices, mesh.colors, mesh, FolderFrames(scene_dir, cfg.every)
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
                progress: bool = True, clip=None, env: DistInfo = DistInfo()) -> dict:
    """Build the cache of ``scenes`` into ``out_dir``; returns a summary (built, skipped, failed).

    ``clip``: an already loaded :class:`ClipModel` matching ``cfg`` to use inline (``workers == 1``);
    worker processes always load their own. ``env``: this process's rank in a torchrun job; it builds
    its share of ``scenes`` (:func:`shard`), and every rank returns the summary merged over all ranks.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = hashed_config(cfg)
    chash = config_hash(identity)
    scenes = shard(scenes, env)
    pending = [s for s in scenes if force or not is_current(cache_path(out_dir, scene_id_of(s)), chash)]
    results = [{"scene_id": scene_id_of(s), "status": "skipped", "seconds": 0.0} for s in scenes if s not in pending]
    desc = "teacher cache" if env.world_size == 1 else f"teacher cache, rank 0 of {env.world_size}"
    bar = tqdm(total=len(scenes), initial=len(results), desc=desc, unit="scene",
               disable=not (progress and env.is_main))
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
    summary = {"config_hash": chash, "config": identity, "out": str(out_dir), "scenes": results, "failed": failed}
    if env.enabled:
        parts: list[dict | None] = [None] * env.world_size
        dist.all_gather_object(parts, summary)
        summary = {**summary, "scenes": [r for p in parts for r in p["scenes"]],
                   "failed": [f for p in parts for f in p["failed"]]}
    summary["scenes"].sort(key=lambda r: r["scene_id"])
    return {**summary, "ranks": env.world_size, "built": sum(r["status"] == "built" for r in summary["scenes"]),
            "skipped": sum(r["status"] == "skipped" for r in summary["scenes"])}


def shard(scenes: list[Path], env: DistInfo) -> list[Path]:
    """Rank r's scenes of a world of W: every W-th of the sorted list, from the r-th (all of them for W = 1)."""
    return sorted(scenes, key=scene_id_of)[env.rank::env.world_size]


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
    p.add_argument("--embedding", choices=("mask_pool", "bbox_crop"), default="mask_pool",
                   help="per-view embedding: mask-pooled dense features (Eq. 6) or a box crop's CLIP embedding")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--force", action="store_true", help="rebuild scenes that are up to date")
    args = p.parse_args(argv)
    if args.workers < 1 or args.every < 1:
        p.error("--workers and --every must be >= 1")
    if args.clip is None and args.clip_config is None:
        p.error("give --clip local-dir:PATH (trained weights) or --clip-config NAME (random weights, plumbing)")
    return args


def run(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the summary it prints (also ``<out>/build_summary.json``)."""
    args = parse_args(argv)
    scenes = find_scenes(args.scenes)
    with distributed(args.device) as env:
        cfg = BuildConfig(clip=args.clip, clip_config=args.clip_config, mask3d=args.mask3d, every=args.every,
                          bag=args.bag, keep_structure=args.keep_structure, transfer_distance=args.transfer_distance,
                          teacher=TeacherConfig(frame_stride=args.every),
                          variant=TeacherVariant(args.views, args.mask, args.embedding), device=str(env.device))
        summary = build_cache(scenes, args.out, cfg, args.workers, args.force, env=env)
    if env.is_main:
        write_json_atomic(args.out / "build_summary.json", summary)
        print(f"teacher cache {args.out}: {summary['built']} built, {summary['skipped']} skipped, "
              f"{len(summary['failed'])} failed (config {summary['config_hash']}, {env.world_size} rank(s))")
    return summary


def main(argv: list[str] | None = None) -> int:
    """The command line: :func:`run`; exit code 1 when a scene failed."""
    return 1 if run(argv)["failed"] else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
