"""Time per scene, by stage, of the FOLK teacher vs the OpenMask3D-style baseline.

    python -m bench.bench_teacher [--scenes 3 --seed 0 --frames 100 --every 10] [--methods teacher baseline]
        [--clip local-dir:PATH | --clip-config folk-tiny-vit] [--device auto] [--out out/bench/teacher.json]

Scenes are generated in memory (``training.data.synthetic.generate_scene``, 640 x 480 frames)
and their frames rendered up front, so reading is not timed; both methods get the GT
instances (wall/floor/ceiling left out) as proposals and the same frames. Prints per-stage
seconds per scene, views per instance and the ratio baseline / teacher; writes JSON.
Timings depend on the CLIP model (a random-weight tiny ViT by default: the same shapes and
FLOPs as the trained one of the same architecture).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.atomic import write_json_atomic
from training.data.synthetic import SynthConfig, generate_scene, scene_name, scene_seed
from training.evaluate.teacher_eval import clip_from_args
from training.teacher.baseline import OpenMaskBaseline
from training.teacher.config import TeacherConfig, TeacherVariant
from training.teacher.proposals import gt_proposals
from training.teacher.teacher import Teacher


METHODS = ("teacher", "baseline")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=3, help="synthetic scenes generated in memory")
    p.add_argument("--seed", type=int, default=0, help="run seed of the scenes")
    p.add_argument("--frames", type=int, default=100, help="frames of each walk (every --every-th is used)")
    p.add_argument("--every", type=int, default=10, help="frame stride (every n-th frame of the walk)")
    clip = p.add_mutually_exclusive_group()
    clip.add_argument("--clip", help="CLIP weights, e.g. local-dir:models/clip")
    clip.add_argument("--clip-config", default="folk-tiny-vit", help="random-weight CLIP architecture")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="what to time (the ratio baseline / teacher needs both)")
    p.add_argument("--variants", action="store_true", help="also time the ablation variants of the teacher")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", type=Path, default=Path("out/bench/teacher.json"), help="JSON result path")
    args = p.parse_args(argv)
    if min(args.scenes, args.frames, args.every) < 1:
        p.error("--scenes, --frames and --every must be >= 1")
    return args


def _table(rows: dict[str, dict[str, float]], stages: list[str]) -> str:
    head = "| method | " + " | ".join(stages) + " | total s/scene | views/inst |"
    lines = [head, "|---" * (len(stages) + 3) + "|"]
    for name, r in rows.items():
        cells = " | ".join(f"{r['stages'].get(s, 0.0):.3f}" for s in stages)
        lines.append(f"| {name} | {cells} | {r['total']:.3f} | {r['views_per_instance']:.2f} |")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns (and writes) the JSON report."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    clip = clip_from_args(args)
    cfg = TeacherConfig(frame_stride=args.every)
    methods = {name: make(clip, cfg) for name, make in (("teacher", Teacher), ("baseline", OpenMaskBaseline))
               if name in args.methods}
    if args.variants:
        methods |= {"teacher-topk": Teacher(clip, cfg, TeacherVariant(views="topk")),
                    "teacher-sparse": Teacher(clip, cfg, TeacherVariant(mask="sparse")),
                    "teacher-crop": Teacher(clip, cfg, TeacherVariant(embedding="bbox_crop"))}
    per_scene = []
    for i in tqdm(range(args.scenes), desc="bench teacher", unit="scene"):
        sid = scene_name(i)
        mesh, walk, _ = generate_scene(scene_seed(args.seed, i), sid, args.frames, SynthConfig(num_frames=args.frames))
        frames = [walk[j] for j in range(0, len(walk), args.every)]
        props = gt_proposals(mesh.instance_ids, mesh.instance_labels)
        row = {"scene_id": sid, "vertices": mesh.num_vertices, "instances": int(len(props.scores)),
               "frames": len(frames), "methods": {}}
        for name, pipe in methods.items():
            if clip.device.type == "cuda":
                torch.cuda.synchronize()
            res = pipe.embed(mesh.vertices, props.masks, frames)
            if clip.device.type == "cuda":
                torch.cuda.synchronize()
            row["methods"][name] = {"timings": res.timings, "total": res.total_seconds, "views": res.num_views,
                                    "frames_encoded": int(len(np.unique(res.view_frame)))}
        per_scene.append(row)
    n_inst = sum(r["instances"] for r in per_scene)
    summary = {}
    for name in methods:
        rs = [r["methods"][name] for r in per_scene]
        stages = sorted({k for r in rs for k in r["timings"]})
        summary[name] = {"stages": {s: float(np.mean([r["timings"].get(s, 0.0) for r in rs])) for s in stages},
                         "total": float(np.mean([r["total"] for r in rs])),
                         "views_per_instance": sum(r["views"] for r in rs) / max(n_inst, 1)}
    all_stages = sorted({s for v in summary.values() for s in v["stages"]},
                        key=lambda s: ("io", "projection", "selection", "completion", "crops", "clip",
                                       "pooling").index(s) if s in ("io", "projection", "selection", "completion",
                                                                    "crops", "clip", "pooling") else 99)
    ratio = summary["baseline"]["total"] / summary["teacher"]["total"] if {"baseline", "teacher"} <= set(summary) \
        else None
    for name, r in summary.items():   # per (instance, frame) view embedded, and per frame CLIP ran on
        rs = [row["methods"][name] for row in per_scene]
        views, frames = sum(x["views"] for x in rs), sum(x["frames_encoded"] for x in rs)
        r["seconds_per_view"] = r["total"] * args.scenes / views if views else float("nan")
        r["seconds_per_frame_encoded"] = r["total"] * args.scenes / frames if frames else float("nan")
    report = {"device": str(clip.device), "clip": clip.description, "torch_threads": torch.get_num_threads(),
              "host": platform.node(), "scenes": args.scenes, "frames": args.frames, "every": args.every,
              "teacher_config": {"clip_image_size": list(cfg.clip_image_size), "k_pre": cfg.k_pre},
              "summary": summary, "baseline_over_teacher": ratio, "per_scene": per_scene,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"{args.scenes} scenes x {per_scene[0]['frames']} frames, {n_inst / args.scenes:.1f} instances/scene, "
          f"CLIP {clip.description} on {clip.device}")
    print(_table(summary, all_stages))
    for name, r in summary.items():
        print(f"{name}: {r['seconds_per_view']:.3f} s per view embedded, {r['seconds_per_frame_encoded']:.3f} s per "
              "frame encoded by CLIP")
    if ratio is not None:
        print(f"baseline / teacher time per scene: {ratio:.2f}x")
    write_json_atomic(args.out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    """The command line: :func:`run`; 0 when the run completed (errors raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
