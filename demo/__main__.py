"""`make demo`: generate (or reuse) synthetic ScanNet-style scenes, read them back, summarise, preview.

Run from the repository root: ``python -m demo [--scenes 2] [--frames 200] [--seed 0]``.
Everything it reads goes through the same readers a real ScanNet folder or robot bag uses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from demo.preview import write_preview
from training.data import rosbag_io, scannet, synthetic
from training.data.types import BAG_TOPICS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    p.add_argument("--scenes", type=int, default=2, help="number of synthetic scenes")
    p.add_argument("--frames", type=int, default=200, help="RGB-D frames per scene")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene set")
    p.add_argument("--data", type=Path, default=Path("data/demo"), help="where scenes are written (reused)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where the summary and preview go")
    return p.parse_args(argv)


def summarise_scene(scene_dir: Path, bag: Path) -> dict:
    """Read one generated scene back through the ScanNet-layout reader and its bag through the bag reader."""
    mesh = scannet.read_scene_mesh(scene_dir)
    frames = scannet.frame_ids(scene_dir)
    classes = Counter(mesh.instance_labels[i] for i in np.unique(mesh.instance_ids) if i > 0)
    clouds = []
    if bag.exists():
        clouds = [len(xyz) for _, xyz, _ in rosbag_io.read_bag_clouds(bag, BAG_TOPICS["cloud"])]
    return {
        "scene": mesh.scene_id,
        "vertices": mesh.num_vertices,
        "frames": len(frames),
        "instances": int(sum(classes.values())),
        "classes": dict(sorted(classes.items())),
        "bag": str(bag) if bag.exists() else None,
        "bag_cloud_points": clouds,
    }


def print_summary(rows: list[dict]) -> None:
    print(f"\n{'scene':<16}{'vertices':>10}{'frames':>8}{'instances':>11}  bag clouds (points)")
    for r in rows:
        print(f"{r['scene']:<16}{r['vertices']:>10}{r['frames']:>8}{r['instances']:>11}  "
              f"{len(r['bag_cloud_points'])} ({', '.join(map(str, r['bag_cloud_points'][-3:]))} ...)")
    total = Counter()
    for r in rows:
        total.update(r["classes"])
    print(f"\ninstances per class over {len(rows)} scenes ({len(total)} classes):")
    width = max(map(len, total)) if total else 0
    for name, n in sorted(total.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {name:<{width}}  {n}")


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    synthetic.main(["--scenes", str(args.scenes), "--seed", str(args.seed),
                    "--frames", str(args.frames), "--out", str(args.data)])
    t_gen = time.perf_counter() - t0
    scene_dirs = sorted(d for d in args.data.iterdir() if d.is_dir() and scannet.is_complete(d))
    if not scene_dirs:
        print(f"demo: no complete scene in {args.data}", file=sys.stderr)
        return 1
    rows = [summarise_scene(d, args.data / "bags" / d.name) for d in scene_dirs[:args.scenes]]
    print_summary(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))
    preview = write_preview(scene_dirs[0], args.out / "preview.png")
    print(f"\ngenerated/reused {len(rows)} scenes in {t_gen:.1f} s under {args.data}")
    print(f"summary: {args.out / 'summary.json'}\npreview: {preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
