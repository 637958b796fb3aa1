"""Class-agnostic AP of a Mask3D checkpoint on held-out scenes, under several post-processings.

    python -m training.mask3d.evaluate --checkpoint runs/mask3d-small/best.pt --scenes data/folk/val \\
        --mask-threshold 0.5 0.1 0.01 --dbscan-eps 0 0.08 0.12 0.2 --nms-iou 0.9 0.7 0.5 \\
        --out runs/mask3d-small/val-post.json

Every GT object (wall, floor and unannotated excluded) is one class and AP / AP50 / AP25 follow
the ScanNet protocol (:mod:`training.evaluate.instance_ap`), as the trainer's validation.
``recall50`` is the fraction of GT objects (>= 100 points) that some proposal covers at IoU >= 0.5.

The network runs once per scene; each (``--mask-threshold``, ``--dbscan-eps``, ``--nms-iou``)
triple is one post-processing of its output: every query's mask is its voxels whose mask
probability exceeds the threshold (Mask3D: 0.5), split by Mask3D's DBSCAN into its parts further
apart than eps metres (0: no split), then class-agnostic mask NMS at that IoU. Mask3D's query
masks are dot products of translation-equivariant voxel features with a query, so one query may
light up two alike objects at once; the split turns such a mask into one proposal per object.
A small model trained briefly is unsure at its objects' edges, so its masks at 0.5 cover only
their cores; a lower threshold recovers the whole object, and the split keeps it from spreading
to the next. Choose all three on validation scenes (``best`` in the JSON, by AP50) and record
them in the bundle (``python -m training.make_bundle --mask-threshold --dbscan-eps --nms-iou``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from folk_ros.core.cloud import DEFAULT_RGB
from folk_ros.core.mask3d.checkpoint import load_checkpoint
from folk_ros.core.mask3d.config import PostprocessConfig
from folk_ros.core.mask3d.model import Mask3D
from training.atomic import write_json_atomic
from training.evaluate.instance_ap import EvalResult, GTScene, PredScene, evaluate
from training.data.scenes import find_scenes, has_mesh_gt
from training.mask3d.data import Scene, load_scene

OBJECT_ID = 1       # the single class of class-agnostic evaluation
MIN_GT_POINTS = 100  # the ScanNet protocol ignores smaller GT instances


def recall_at(gt: np.ndarray, masks: np.ndarray, iou: float = 0.5) -> tuple[int, int]:
    """(GT objects with >= MIN_GT_POINTS points covered by a proposal at IoU >= ``iou``, such objects).

    gt: (N,) instance id per point (0 = none); masks: (M, N) bool proposals.
    """
    ids, counts = np.unique(gt[gt > 0], return_counts=True)
    ids = ids[counts >= MIN_GT_POINTS]
    if len(ids) == 0 or len(masks) == 0:
        return 0, len(ids)
    onehot = (gt[None, :] == ids[:, None]).astype(np.float32)          # (G, N)
    m = masks.astype(np.float32)
    inter = onehot @ m.T                                                # (G, M)
    union = onehot.sum(1)[:, None] + m.sum(1)[None, :] - inter
    return int(((inter / np.maximum(union, 1)).max(1) >= iou).sum()), len(ids)


def class_agnostic_results(model: Mask3D, scenes: list[Scene], posts: list[PostprocessConfig],
                           progress: bool = False) -> list[tuple[EvalResult, float]]:
    """(ScanNet-protocol result, recall50) per post-processing setting, every GT object one class."""
    if not posts:
        raise ValueError("give at least one post-processing setting")
    gts = []
    preds: list[list[PredScene]] = [[] for _ in posts]
    hits, total = np.zeros(len(posts), np.int64), 0
    for s in tqdm(scenes, desc="scenes", disable=not progress):
        gts.append(GTScene.from_labels(s.scene_id, np.where(s.instance > 0, OBJECT_ID, 0), s.instance))
        for k, p in enumerate(model.predict_many(s.xyz, s.rgb, posts)):
            masks = p.masks.cpu().numpy()
            preds[k].append(PredScene(s.scene_id, masks, np.full(len(masks), OBJECT_ID), p.scores.cpu().numpy()))
            hit, n = recall_at(s.instance, masks)
            hits[k] += hit
        total += n
    return [(evaluate(gts, pr, class_ids=(OBJECT_ID,), class_names=("object",), ignored_labels=()),
             float(h / max(total, 1))) for pr, h in zip(preds, hits)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.mask3d.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="Mask3D checkpoint (ours or a bundle's mask3d.pt)")
    p.add_argument("--scenes", type=Path, nargs="+", required=True, help="folders of ScanNet-layout scenes")
    p.add_argument("--mask-threshold", type=float, nargs="+", default=[0.5],
                   help="mask probability thresholds (Mask3D: 0.5)")
    p.add_argument("--dbscan-eps", type=float, nargs="+", default=[0.0], help="split distances in metres (0: none)")
    p.add_argument("--nms-iou", type=float, nargs="+", default=[0.9], help="mask NMS IoUs")
    p.add_argument("--max-scenes", type=int, default=0, help="0: all")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--colourless", action="store_true",
                   help="give the model the scenes without their colours (every point the node's default grey), "
                        "as a LiDAR cloud reaches it")
    p.add_argument("--out", type=Path, help="JSON report")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        posts = [PostprocessConfig.class_agnostic(e, n, mask_threshold=t)
                 for t in args.mask_threshold for e in args.dbscan_eps for n in args.nms_iou]
    except ValueError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dirs = find_scenes(args.scenes, has_mesh_gt)
    if args.max_scenes:
        dirs = dirs[:args.max_scenes]
    scenes = [load_scene(d) for d in tqdm(dirs, desc="load")]
    if args.colourless:
        scenes = [replace(s, rgb=np.broadcast_to(np.asarray(DEFAULT_RGB, np.float32), s.xyz.shape)) for s in scenes]
    model, _ = load_checkpoint(args.checkpoint, map_location=args.device)   # strict: a mismatch raises
    rows = []
    for post, (res, recall) in zip(posts, class_agnostic_results(model, scenes, posts, progress=True)):
        rows.append({"mask_threshold": post.mask_threshold,
                     "dbscan_eps": post.dbscan_eps if post.use_dbscan else 0.0, "nms_iou": post.nms_iou,
                     **{k: float(v) for k, v in res.mean.items()}, "recall50": recall})
    print(f"{len(scenes)} scenes{' (colourless)' if args.colourless else ''}, checkpoint {args.checkpoint} "
          f"(input {model.cfg.input_features})")
    print("| mask_threshold | dbscan_eps | nms_iou | AP | AP50 | AP25 | recall50 |\n"
          "|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mask_threshold']:g} | {r['dbscan_eps']:g} | {r['nms_iou']:g} | {r['ap']:.3f} | {r['ap50']:.3f} "
              f"| {r['ap25']:.3f} | {r['recall50']:.3f} |")
    best = max(rows, key=lambda r: r["ap50"])
    print(f"best AP50 {best['ap50']:.3f} at mask_threshold {best['mask_threshold']:g}, "
          f"dbscan_eps {best['dbscan_eps']:g}, nms_iou {best['nms_iou']:g}")
    if args.out:
        write_json_atomic(args.out, {"checkpoint": str(args.checkpoint), "colourless": args.colourless,
                                     "input_features": model.cfg.input_features, "scenes": [str(d) for d in dirs],
                                     "rows": rows, "best": best})
    return 0


if __name__ == "__main__":
    sys.exit(main())
