"""Teacher vs OpenMask3D-style baseline as classifiers of GT instance proposals.

    python -m training.evaluate.teacher_eval --scenes DIR [DIR ...]
        [--clip local-dir:PATH | --clip-config folk-tiny-vit]
        [--methods teacher baseline] [--vocabulary synthetic|scannet200|a,b,c] [--every 10] [--out JSON]

Per scene (ScanNet layout, with GT): the GT instances are the proposals (wall, floor and
ceiling left out: the benchmark ignores them), every method embeds them from the same
frames (read once, in memory; reading time reported apart) and classifies them against the
vocabulary's text embeddings. A prediction is the proposal's mask with the classified label
and the confidence ``softmax(embedding . text / temperature)[label]`` (temperature = 1 /
CLIP's learned logit scale); instances no frame sees get no prediction. AP / AP50 / AP25 come
from :func:`training.evaluate.instance_ap.evaluate` (ScanNet200 protocol); also the top-1
label accuracy over the proposals and the time per scene of each method by stage.

Methods: ``teacher`` (FOLK, Eq. 1-6, labels by view vote), ``baseline`` (OpenMask3D-style
multi-level crops, mean of views), and the ablation variants ``teacher-topk`` (no angle
filter), ``teacher-sparse`` (no mask completion), ``teacher-crop`` (bbox crops instead of
mask pooling), ``teacher-mean`` (the teacher's views, labelled by their mean).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from folk_ros.core.clip import ClipModel
from training.atomic import write_json_atomic
from training.data.scannet import read_frames, read_scene_mesh
from training.data.scenes import find_scenes
from training.data.vocabularies import label_ids_of, vocabulary
from training.evaluate.instance_ap import EvalResult, GTScene, PredScene, evaluate
from training.teacher.baseline import OpenMaskBaseline
from training.teacher.config import TeacherConfig, TeacherVariant
from training.teacher.proposals import gt_proposals
from training.teacher.teacher import Classification, Teacher, TeacherResult, classify

# method -> (pipeline kind, teacher variant, classification rule)
METHODS: dict[str, tuple[str, TeacherVariant | None, str]] = {
    "teacher": ("teacher", TeacherVariant(), "vote"),
    "teacher-mean": ("teacher", TeacherVariant(), "mean"),
    "teacher-topk": ("teacher", TeacherVariant(views="topk"), "vote"),
    "teacher-sparse": ("teacher", TeacherVariant(mask="sparse"), "vote"),
    "teacher-crop": ("teacher", TeacherVariant(embedding="bbox_crop"), "vote"),
    "baseline": ("baseline", None, "mean"),
}


def predictions(scene_id: str, masks: np.ndarray, cls: Classification, vocab_ids: np.ndarray,
                proposal_scores: np.ndarray | None = None) -> PredScene:
    """PredScene of the classified proposals (those with a label); confidence = label prob x proposal score."""
    keep = cls.has_label
    score = cls.probs[keep].astype(np.float64)
    if proposal_scores is not None:
        score = score * np.asarray(proposal_scores, np.float64)[keep]
    return PredScene(scene_id, masks[keep], vocab_ids[cls.labels[keep]], score)


@dataclass
class MethodRun:
    """One method on one scene: its embeddings (with timings) and labels."""

    result: TeacherResult
    classification: Classification


def run_method(pipeline, rule: str, points: np.ndarray, masks: np.ndarray, frames: list, text, temperature: float
               ) -> MethodRun:
    res = pipeline.embed(points, masks, frames)
    t0 = time.perf_counter()
    cls = classify(res.view_embeddings, res.view_instance, text, res.num_instances, rule, temperature)
    res.timings["classify"] = time.perf_counter() - t0
    return MethodRun(res, cls)


def evaluate_scenes(scene_dirs: list[Path], clip, methods: list[str], vocab: tuple[str, ...], every: int = 10,
                    cfg: TeacherConfig | None = None, progress: bool = True) -> dict:
    """Run ``methods`` on GT proposals of each scene; returns the report dict (see :func:`main`)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    cfg = cfg or TeacherConfig(frame_stride=every)
    vocab_ids = label_ids_of(vocab)
    text = clip.encode_text(list(vocab)).cpu()
    temperature = float(1.0 / clip.model.logit_scale.exp().item())
    pipes = {m: (Teacher(clip, cfg, METHODS[m][1]) if METHODS[m][0] == "teacher" else OpenMaskBaseline(clip, cfg))
             for m in methods}
    gts, preds = [], {m: [] for m in methods}
    per_scene = []
    for scene_dir in tqdm(scene_dirs, desc="teacher eval", unit="scene", disable=not progress):
        t0 = time.perf_counter()
        mesh = read_scene_mesh(scene_dir)
        frames = list(read_frames(scene_dir, every=every))
        read_s = time.perf_counter() - t0
        props = gt_proposals(mesh.instance_ids, mesh.instance_labels)
        gts.append(GTScene.from_mesh(mesh))
        row = {"scene_id": mesh.scene_id, "frames": len(frames), "instances": int(len(props.scores)),
               "read_seconds": read_s, "methods": {}}
        gt_label = props.label_ids
        for m in methods:
            run = run_method(pipes[m], METHODS[m][2], mesh.vertices, props.masks, frames, text, temperature)
            preds[m].append(predictions(mesh.scene_id, props.masks, run.classification, vocab_ids))
            lab = run.classification.labels
            pred_ids = np.where(lab >= 0, vocab_ids[np.maximum(lab, 0)], -1)
            row["methods"][m] = {"seconds": run.result.total_seconds, "timings": run.result.timings,
                                 "views": run.result.num_views, "labelled": int((lab >= 0).sum()),
                                 "correct": int((pred_ids == gt_label).sum())}
        per_scene.append(row)
    report = {"scenes": [r["scene_id"] for r in per_scene], "vocabulary": list(vocab), "every": every,
              "temperature": temperature, "clip": clip.description, "methods": {}, "per_scene": per_scene}
    for m in methods:
        res: EvalResult = evaluate(gts, preds[m])
        rows = [r["methods"][m] for r in per_scene]
        stages = sorted({k for r in rows for k in r["timings"]})
        n_inst = sum(r["instances"] for r in per_scene)
        report["methods"][m] = {
            "ap": res.mean["ap"], "ap50": res.mean["ap50"], "ap25": res.mean["ap25"],
            "accuracy": sum(r["correct"] for r in rows) / max(n_inst, 1),
            "labelled": sum(r["labelled"] for r in rows) / max(n_inst, 1),
            "seconds_per_scene": float(np.mean([r["seconds"] for r in rows])),
            "stage_seconds_per_scene": {s: float(np.mean([r["timings"].get(s, 0.0) for r in rows])) for s in stages},
            "views_per_instance": sum(r["views"] for r in rows) / max(n_inst, 1),
            "eval": res.to_dict(),
        }
    return report


def format_report(report: dict) -> str:
    """A markdown table: AP, AP50, AP25, accuracy, s/scene per method, ratios to the first method."""
    ms = report["methods"]
    first = next(iter(ms))
    lines = [f"{len(report['scenes'])} scenes, {len(report['vocabulary'])} classes, CLIP {report['clip']}",
             "| method | AP | AP50 | AP25 | top-1 acc | s/scene | time vs " + first + " |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m, v in ms.items():
        f = [f"{100 * x:.1f}" if x is not None and x == x else "nan" for x in (v["ap"], v["ap50"], v["ap25"])]
        lines.append(f"| {m} | {f[0]} | {f[1]} | {f[2]} | {100 * v['accuracy']:.1f} | {v['seconds_per_scene']:.2f} "
                     f"| {v['seconds_per_scene'] / ms[first]['seconds_per_scene']:.2f}x |")
    lines.append("")
    for m, v in ms.items():
        stages = ", ".join(f"{k} {s:.3f}" for k, s in v["stage_seconds_per_scene"].items())
        lines.append(f"{m} stages (s/scene): {stages}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate.teacher_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=Path, nargs="+", required=True, help="scene folders or folders of scenes")
    clip = p.add_mutually_exclusive_group(required=True)
    clip.add_argument("--clip", help="CLIP weights, e.g. local-dir:models/clip")
    clip.add_argument("--clip-config", help="RANDOM-weight CLIP (plumbing only: labels mean nothing)")
    p.add_argument("--methods", nargs="+", default=["teacher", "baseline"], choices=sorted(METHODS),
                   help="what to evaluate: the FOLK teacher and/or the OpenMask3D-style baseline")
    p.add_argument("--vocabulary", default="synthetic", help="synthetic, scannet200 or comma-separated names")
    p.add_argument("--every", type=int, default=TeacherConfig.frame_stride, help="frame stride")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", type=Path, default=None, help="report JSON path")
    args = p.parse_args(argv)
    if args.every < 1:
        p.error("--every must be >= 1")
    return args


def clip_from_args(args: argparse.Namespace):
    """The CLIP of ``--clip`` (a model name or ``local-dir:`` folder), else the seeded ``--clip-config`` double."""
    if args.clip:
        return ClipModel(args.clip, device=args.device)
    return ClipModel.from_config(args.clip_config, device=args.device, seed=0)


def run(argv: list[str] | None = None) -> dict:
    """CLI entry point; prints the table, writes the JSON report if asked, returns the report."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    clip = clip_from_args(args)
    report = evaluate_scenes(find_scenes(args.scenes), clip, args.methods, vocabulary(args.vocabulary), args.every)
    print(format_report(report))
    if args.out:
        write_json_atomic(args.out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    """The command line: :func:`run`; 0 when the run completed (errors raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
