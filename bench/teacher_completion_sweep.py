"""Choose the mask-completion constants the paper lost, by measurement (Eq. 2-5).

For synthetic ScanNet-layout scenes: project the GT mesh vertices of each instance into
its views chosen by Eq. 1 (the frames the teacher actually completes masks in), complete
the sparse masks and score the mean IoU against the rendered dense GT instance mask of
the same frame. Prints

1. the visibility test per depth threshold: the share of visible projected vertices that
   land on their own instance in the rendered GT mask (the >= 95 % check), and how many;
2. plain square dilation per radius r (r = 0 is the sparse mask itself);
3. density-guided completion over a grid of (r, Gaussian k, density tau, top-k), best first.

Usage::

    python -m bench.teacher_completion_sweep [--scenes 3 --seed 0] [--max-pairs 200] [--data DIR]

Scenes are made in memory by ``training.data.synthetic.generate_scene`` (the frames of a
200-frame walk, every 10th), or read from ScanNet-layout folders holding ``instance/<i>.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.data.scannet import is_complete, read_frames, read_scene_mesh
from training.data.types import Frame, SceneMesh
from training.teacher.config import TeacherConfig
from training.teacher.mask_completion import complete_mask, dilate_mask
from training.teacher.projection import point_visibility, project_instances
from training.teacher.view_selection import select_views_batch

SKIP_LABELS = ("wall", "floor", "ceiling")  # room shell: not proposals the benchmark scores


@dataclass
class Pair:
    """One (instance, view): its sparse projected mask and the rendered dense GT mask, cropped."""

    scene: str
    instance: int  # 1-based instance id
    frame: int
    sparse: np.ndarray  # (h, w) bool
    dense: np.ndarray  # (h, w) bool


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def _crop(sparse: np.ndarray, dense: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their joint bounding box plus a margin (IoU is unchanged)."""
    ys, xs = np.nonzero(sparse | dense)
    h, w = sparse.shape
    y0, y1 = max(ys.min() - margin, 0), min(ys.max() + margin + 1, h)
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, w)
    return sparse[y0:y1, x0:x1].copy(), dense[y0:y1, x0:x1].copy()


def scored_instances(mesh: SceneMesh) -> np.ndarray:
    """(M,) bool: instance index m (id m + 1) is an object, not room shell or unannotated."""
    m = int(mesh.instance_ids.max()) if mesh.num_vertices else 0
    keep = np.zeros(m, dtype=bool)
    for k in range(1, m + 1):
        keep[k - 1] = mesh.instance_labels.get(k, "") not in SKIP_LABELS and (mesh.instance_ids == k).any()
    return keep


def visibility_table(mesh: SceneMesh, frames: list[Frame], thresholds: list[float]) -> list[tuple]:
    """Per depth threshold: (threshold, visible object vertices, share on their own GT instance pixel).

    Room shell (walls, floor) is left out: wall vertices behind a picture hung 2 mm off the
    wall pass any depth test, which says nothing about the test itself.
    """
    objects = np.concatenate([[False], scored_instances(mesh)])[mesh.instance_ids]  # (N,) bool
    rows = []
    for thr in thresholds:
        hits = total = 0
        for f in frames:
            vis, pix = point_visibility(mesh.vertices, f, thr)
            vis &= objects
            gt = f.instance.reshape(-1)[pix[vis]]
            hits += int(np.count_nonzero(gt == mesh.instance_ids[vis]))
            total += int(np.count_nonzero(vis))
        rows.append((thr, total, hits / max(total, 1)))
    return rows


def collect_pairs(scene: str, mesh: SceneMesh, frames: list[Frame], cfg: TeacherConfig, min_pixels: int,
                  margin: int) -> list[Pair]:
    """Sparse/dense mask pairs of every object instance in its Eq. 1 views."""
    projections = [project_instances(mesh.vertices, mesh.instance_ids, f, cfg.depth_threshold) for f in frames]
    counts = np.stack([p.counts for p in projections], axis=1)  # (M, F)
    poses = np.stack([f.pose for f in frames])
    views = select_views_batch(counts, poses, cfg.k_pre, cfg.angle_threshold_deg, max(min_pixels, 1))
    keep = scored_instances(mesh)
    pairs = []
    for m, vs in enumerate(views):
        if not keep[m]:
            continue
        for v in vs:
            dense = frames[v].instance == m + 1
            if np.count_nonzero(dense) < min_pixels:
                continue
            sparse, dense = _crop(projections[v].mask(m), dense, margin)
            pairs.append(Pair(scene, m + 1, frames[v].index, sparse, dense))
    return pairs


def completion_grid(args: argparse.Namespace, base: TeacherConfig) -> list[TeacherConfig]:
    """The configs of the sweep; the expansion radius is r itself unless ``--expansion-radii`` is given."""
    grid = itertools.product(args.radii, args.expansion_radii or [None], args.kernels, args.thresholds, args.topk)
    return [dataclasses.replace(base, dilation_radius=r, expansion_radius=r if re is None else re,
                                gaussian_kernel_size=k, density_threshold=t, top_k_directions=tk)
            for r, re, k, t, tk in grid]


def _generate(args: argparse.Namespace) -> list[tuple[str, SceneMesh, list[Frame]]]:
    """Scenes made in memory by the synthetic generator (only the frames used are rendered)."""
    from training.data.synthetic import SynthConfig, generate_scene, scene_name, scene_seed

    cfg = SynthConfig(cloud_every=10 ** 9)  # the fused clouds are not needed here
    out = []
    for i in tqdm(range(args.scenes), desc="generate scenes"):
        mesh, walk, _ = generate_scene(scene_seed(args.seed, i), scene_name(i), args.frames, cfg)
        out.append((mesh.scene_id, mesh, [walk[j] for j in range(0, len(walk), args.every)]))
    return out


def _read(args: argparse.Namespace) -> list[tuple[str, SceneMesh, list[Frame]]]:
    """ScanNet-layout synthetic scenes from disk (they must carry ``instance/<i>.png``)."""
    data = Path(args.data)
    scenes = sorted(p for p in data.iterdir() if p.is_dir() and is_complete(p)) if data.is_dir() else []
    if not scenes:
        raise SystemExit(f"no complete ScanNet-layout scenes under {data}")
    out = []
    for d in tqdm(scenes[: args.scenes], desc="read scenes"):
        frames = list(read_frames(d, every=args.every, with_instance=True))
        out.append((d.name, read_scene_mesh(d), frames))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None,
                   help="folder of ScanNet-layout synthetic scenes; default: generate --scenes in memory")
    p.add_argument("--seed", type=int, default=0, help="generator run seed and pair-sampling seed")
    p.add_argument("--scenes", type=int, default=3, help="scenes to generate (or at most to read)")
    p.add_argument("--frames", type=int, default=200, help="frames of each generated walk")
    p.add_argument("--every", type=int, default=TeacherConfig.frame_stride, help="frame stride")
    p.add_argument("--max-pairs", type=int, default=200, help="(instance, view) pairs sampled for the sweep")
    p.add_argument("--min-pixels", type=int, default=100, help="smallest rendered GT mask scored, pixels")
    p.add_argument("--radii", type=int, nargs="+", default=[1, 2], help="r of Eq. 2 and Eq. 5, pixels")
    p.add_argument("--expansion-radii", type=int, nargs="+", default=None,
                   help="window radius of Eq. 5 when it should differ from r, pixels")
    p.add_argument("--kernels", type=int, nargs="+", default=[9, 15, 31], help="Gaussian k of Eq. 3, pixels")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.3, 0.5], help="density tau")
    p.add_argument("--topk", type=int, nargs="+", default=[1, 2, 3], help="top-k directions of Eq. 5")
    p.add_argument("--depth-thresholds", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2],
                   help="visibility thresholds for table 1, metres")
    p.add_argument("--show", type=int, default=15, help="rows of the completion table to print")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = TeacherConfig()
    scenes = _read(args) if args.data else _generate(args)

    print("\n## 1. Visibility of GT object vertices (share landing on their own rendered instance)\n")
    print("| depth threshold (m) | visible vertices | on own GT instance |\n|---|---|---|")
    tables = [visibility_table(mesh, frames, args.depth_thresholds) for _, mesh, frames in scenes]
    for i, thr in enumerate(args.depth_thresholds):
        n = sum(t[i][1] for t in tables)
        share = sum(t[i][1] * t[i][2] for t in tables) / max(n, 1)
        print(f"| {thr:.2f} | {n} | {share:.4f} |")

    pairs = []
    for name, mesh, frames in tqdm(scenes, desc="project"):
        pairs += collect_pairs(name, mesh, frames, base, args.min_pixels, margin=3 * max(args.radii) + 8)
    rng = np.random.default_rng(args.seed)
    if len(pairs) > args.max_pairs:
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), args.max_pairs, replace=False))]
    fill = np.mean([np.count_nonzero(p.sparse) / max(np.count_nonzero(p.dense), 1) for p in pairs])
    print(f"\n{len(pairs)} (instance, view) pairs from {len(scenes)} scenes; "
          f"sparse pixels / GT pixels = {fill:.3f} on average")

    print("\n## 2. Plain square dilation\n")
    print("| r | mean IoU |\n|---|---|")
    for r in range(0, max(args.radii) + 3):
        print(f"| {r} | {np.mean([iou(dilate_mask(p.sparse, r), p.dense) for p in pairs]):.4f} |")

    rows = []
    for cfg in tqdm(completion_grid(args, base), desc="completion grid"):
        t0 = time.perf_counter()
        scores = [iou(complete_mask(p.sparse, cfg), p.dense) for p in pairs]
        ms = 1000 * (time.perf_counter() - t0) / len(pairs)
        rows.append((float(np.mean(scores)), float(np.median(scores)), ms, cfg))
    rows.sort(key=lambda row: -row[0])
    print("\n## 3. Density-guided completion (Eq. 2-5), best first\n")
    print("| r | r_e | k | tau | top-k | mean IoU | median IoU | ms / mask |\n|---|---|---|---|---|---|---|---|")
    for mean, med, ms, c in rows[: args.show]:
        print(f"| {c.dilation_radius} | {c.expansion_radius} | {c.gaussian_kernel_size} | {c.density_threshold} "
              f"| {c.top_k_directions} | {mean:.4f} | {med:.4f} | {ms:.1f} |")
    cur = next((r for r in rows if all(getattr(r[3], f) == getattr(base, f) for f in (
        "dilation_radius", "expansion_radius", "gaussian_kernel_size", "density_threshold",
        "top_k_directions"))), None)
    if cur is not None:
        print(f"\ncurrent defaults: mean IoU {cur[0]:.4f} (rank {rows.index(cur) + 1} of {len(rows)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
