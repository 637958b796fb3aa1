"""Evaluate student, teacher and baseline on the same proposals: ScanNet200-protocol AP and time per scene.

    python -m training.evaluate --method student teacher baseline --scenes DIR [DIR ...] \\
        [--bundle models/folk-synth] [--proposals mask3d|gt] [--vocabulary synthetic|scannet200|a,b,c] \\
        [--every 10] [--out out/evaluate] [--threads N] [--device auto|cpu|cuda]

``--scenes``: scene folders in ScanNet's layout (mesh + GT + RGB-D frames), or folders of them.
Per scene one proposal set is shared by all methods, and each method labels it (how, and what
"label stage", "time per scene" and "matching rate" mean: :mod:`training.evaluate.harness`).
The evaluated classes are the vocabulary's (ScanNet200 ids; wall and floor ignored), i.e. the
ScanNet200 benchmark with ``--vocabulary scannet200``.

Written to ``--out``:

* ``report.md`` -- markdown tables: AP / AP50 / AP25 per method (head/common/tail when the
  scenes have classes of those splits), predictions per scene, label-stage and total seconds per
  scene, label-stage time relative to the student; proposals per scene and the matching rate;
  seconds per scene per stage; per-class AP per method;
* ``report.json`` -- the same figures plus the per-scene rows and the full per-class results;
* ``ap_vs_time.png`` -- AP against time per scene (total, and label stage only), one point per method;
* ``predictions/<method>/<scene>.txt`` (+ ``predicted_masks/``) -- the ScanNet benchmark format,
  and ``gt/<scene>.txt``, so that ``python -m training.evaluate.benchmark --gt OUT/gt
  --pred OUT/predictions/<method>`` re-scores them (over all ScanNet200 classes).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from folk_ros.core.segmenter import Segmenter
from training.atomic import write_text_atomic
from training.data.scenes import find_scenes
from training.data.vocabularies import label_ids_of, vocabulary
from training.evaluate.harness import (ALL_METHODS, PROPOSAL_SOURCES, STUDENT, HarnessConfig, Labellers,
                                       SceneOutput, evaluate_scene, uses_mask3d)
from training.evaluate.benchmark_files import write_pred_txt
from training.evaluate.instance_ap import EvalConfig, EvalResult, summarize
from training.teacher.config import TeacherConfig

PRED_DIR = "predictions"
GT_DIR = "gt"
SPLITS = ("head", "common", "tail")


# --------------------------------------------------------------------------- the run


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def method_summary(method: str, result: EvalResult, rows: list[dict], proposals: str) -> dict:
    """One method's figures over the scenes (see :func:`run`)."""
    mine = [r["methods"][method] for r in rows]
    stages = list(dict.fromkeys(k for r in mine for k in r["stage_seconds"]))
    n_props = sum(r["proposals"] for r in rows)
    out = {
        "ap": _num(result.mean["ap"]), "ap50": _num(result.mean["ap50"]), "ap25": _num(result.mean["ap25"]),
        "splits": {s: {k: _num(v) for k, v in d.items()} for s, d in result.split_means.items()
                   if not math.isnan(d["ap"])},
        "seconds_per_scene": _mean(r["seconds"] for r in mine),
        "label_seconds_per_scene": _mean(r["label_seconds"] for r in mine),
        "stage_seconds_per_scene": {s: _mean(r["stage_seconds"].get(s, 0.0) for r in mine) for s in stages},
        "includes_mask3d": uses_mask3d(method, proposals),
        "predictions_per_scene": _mean(r["predictions"] for r in mine),
        "labelled_fraction": sum(r["labelled"] for r in mine) / max(n_props, 1),
        "accuracy": (sum(r["correct"] for r in mine) / max(n_props, 1)) if proposals == "gt" else None,
        "eval": result.to_dict(),
    }
    return out


def label_time_ratios(rows: list[dict], methods: tuple[str, ...]) -> dict:
    """Label-stage time of each other method over the student's: ratio of the per-scene means, and the
    smallest per-scene ratio (the claim 'N x faster per scene' holds on every scene when min >= N)."""
    if STUDENT not in methods:
        return {}
    out = {}
    s = np.asarray([r["methods"][STUDENT]["label_seconds"] for r in rows])
    for m in methods:
        if m == STUDENT:
            continue
        t = np.asarray([r["methods"][m]["label_seconds"] for r in rows])
        ok = s > 0
        out[f"{m}/{STUDENT}"] = {
            "ratio_of_means": float(t.mean() / s.mean()) if s.mean() > 0 else None,
            "min_per_scene": float((t[ok] / s[ok]).min()) if ok.any() else None,
            "median_per_scene": float(np.median(t[ok] / s[ok])) if ok.any() else None,
        }
    return out


def run(scene_dirs: list[Path], segmenter, cfg: HarnessConfig, vocabulary: tuple[str, ...], out_dir: Path,
        progress: bool = True) -> dict:
    """Evaluate ``cfg.methods`` on ``scene_dirs``; writes the prediction and GT txt files; returns the report.

    Scene results are matched as they come and only the matches are kept, so memory stays at one
    scene's masks. The first ``cfg.warmup`` scenes are run once untimed before the measured pass.
    """
    if not scene_dirs:
        raise ValueError("no scenes to evaluate")
    labellers = Labellers(segmenter, cfg, vocabulary)
    config = EvalConfig.make(class_ids=labellers.vocab_ids.tolist(), class_names=list(vocabulary))
    for s in tqdm(scene_dirs[:cfg.warmup], desc="warm-up", unit="scene", disable=not progress):
        evaluate_scene(s, labellers, config)
    matches: dict[str, list] = {m: [] for m in cfg.methods}
    rows = []
    for s in tqdm(scene_dirs, desc="evaluate", unit="scene", disable=not progress):
        res: SceneOutput = evaluate_scene(s, labellers, config)
        sid = res.gt.scene_id
        for m in cfg.methods:
            matches[m].append(res.matches[m])
            write_pred_txt(out_dir / PRED_DIR / m, sid, res.preds[m])
        (out_dir / GT_DIR).mkdir(parents=True, exist_ok=True)
        np.savetxt(out_dir / GT_DIR / f"{sid}.txt", res.gt.ids, fmt="%d")  # the benchmark's GT format
        rows.append(res.row)

    matched, counted = sum(r["matched"] for r in rows), sum(r["gt_instances"] for r in rows)
    shared = list(dict.fromkeys(k for r in rows for k in r["shared_seconds"]))
    return {
        "scenes": [r["scene_id"] for r in rows],
        "config": {"methods": list(cfg.methods), "proposals": cfg.proposals, "every": cfg.every,
                   "clip_image_size": list(cfg.clip_image_size), "match_iou": cfg.match_iou, "warmup": cfg.warmup,
                   "device": str(segmenter.device), "threads": torch.get_num_threads(),
                   "student_temperature": segmenter.cfg.temperature,
                   "teacher_temperature": labellers.teacher_temperature,
                   "prompt_template": segmenter.cfg.prompt_template, "clip": segmenter.clip.description},
        "vocabulary": list(vocabulary),
        "evaluated_classes": len(config.class_ids),
        "text_seconds": labellers.text_seconds,
        "proposals": {"source": cfg.proposals, "per_scene": _mean(r["proposals"] for r in rows),
                      "matching_rate": matched / counted if counted else None, "matched": matched,
                      "gt_instances": counted, "match_iou": cfg.match_iou},
        "shared_seconds_per_scene": {k: _mean(r["shared_seconds"][k] for r in rows) for k in shared},
        "methods": {m: method_summary(m, summarize(matches[m], config), rows, cfg.proposals) for m in cfg.methods},
        "label_time_ratio": label_time_ratios(rows, cfg.methods),
        "per_scene": rows,
    }


# --------------------------------------------------------------------------- report files


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _sec(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "–"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def format_markdown(report: dict) -> str:
    """The markdown report (tables of :func:`run`'s figures)."""
    ms, cfg, props = report["methods"], report["config"], report["proposals"]
    splits = [s for s in SPLITS if any(s in v["splits"] for v in ms.values())]
    student = ms.get(STUDENT)
    lines = [
        "# Evaluation: " + ", ".join(ms),
        "",
        f"{len(report['scenes'])} scenes, {props['source']} proposals, vocabulary of {len(report['vocabulary'])} "
        f"names ({report['evaluated_classes']} evaluated classes), CLIP {cfg['clip']}, device {cfg['device']}, "
        f"{cfg['threads']} CPU threads, frame stride {cfg['every']}.",
        "",
        "| method | AP | AP50 | AP25 | " + "".join(f"{s} AP | " for s in splits)
        + "preds/scene | label s/scene | total s/scene | label time vs student |",
        "|---|---:|---:|---:|" + "---:|" * len(splits) + "---:|---:|---:|---:|",
    ]
    for m, v in ms.items():
        rel = "–" if student is None or not student["label_seconds_per_scene"] else \
            f"{v['label_seconds_per_scene'] / student['label_seconds_per_scene']:.1f}x"
        split_cells = "".join(f"{_pct(v['splits'].get(s, {}).get('ap'))} | " for s in splits)
        lines.append(f"| {m} | {_pct(v['ap'])} | {_pct(v['ap50'])} | {_pct(v['ap25'])} | {split_cells}"
                     f"{v['predictions_per_scene']:.1f} | {_sec(v['label_seconds_per_scene'])} | "
                     f"{_sec(v['seconds_per_scene'])} | {rel} |")
    lines += ["", "AP figures in %. Label stage: the method's work after the proposals; total: label stage plus the "
              "Mask3D pass where the method uses it (the student always). Reading scenes is not counted.", ""]
    for name, r in report["label_time_ratio"].items():
        x = {k: "–" if v is None else f"{v:.1f}x" for k, v in r.items()}
        lines.append(f"- label-stage time {name}: {x['ratio_of_means']} (ratio of the means), "
                     f"smallest per scene {x['min_per_scene']}, median {x['median_per_scene']}")
    rate = props["matching_rate"]
    lines += ["", "## Proposals", "", "| source | proposals/scene | GT instances | matched (IoU >= "
              f"{props['match_iou']}) | matching rate |", "|---|---:|---:|---:|---:|",
              f"| {props['source']} | {props['per_scene']:.1f} | {props['gt_instances']} | {props['matched']} | "
              f"{_pct(rate)} % |", ""]
    shared = report["shared_seconds_per_scene"]
    lines += ["## Time per scene per stage", "",
              "Shared: " + ", ".join(f"{k} {_sec(v)}" for k, v in shared.items())
              + f"; text embeddings (once) {_sec(report['text_seconds'])}.", "",
              "| method | stage | s/scene |", "|---|---|---:|"]
    for m, v in ms.items():
        for stage, s in v["stage_seconds_per_scene"].items():
            lines.append(f"| {m} | {stage} | {_sec(s)} |")
        if v["includes_mask3d"]:
            lines.append(f"| {m} | (mask3d, shared) | {_sec(shared.get('mask3d'))} |")
    if props["source"] == "gt":
        lines += ["", "Top-1 label accuracy over the GT proposals: "
                  + ", ".join(f"{m} {_pct(v['accuracy'])} %" for m, v in ms.items())]
    lines += ["", "## Per class", ""]
    for m, v in ms.items():
        lines += [f"### {m}", "", _class_table(v["eval"]), ""]
    return "\n".join(lines)


def _class_table(ev: dict) -> str:
    rows = ["| class | AP | AP50 | AP25 |", "|---|---:|---:|---:|"]
    for name, c in ev["classes"].items():
        if c["ap"] is not None:
            rows.append(f"| {name} | {_pct(c['ap'])} | {_pct(c['ap50'])} | {_pct(c['ap25'])} |")
    return "\n".join(rows)


def plot_ap_vs_time(report: dict, path: Path) -> Path:
    """``path``: AP (%) against seconds per scene (log scale), total and label stage, one point per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "seconds_per_scene", "time per scene (label stage + Mask3D where used)"),
                           (axes[1], "label_seconds_per_scene", "label stage per scene")):
        for i, (m, v) in enumerate(report["methods"].items()):
            t, ap = v[key], v["ap"]
            if ap is None or not t or not math.isfinite(t) or t <= 0:
                continue
            ax.scatter([t], [100 * ap], s=60, color=f"C{i}", label=m, zorder=3)
            ax.annotate(m, (t, 100 * ap), textcoords="offset points", xytext=(6, 4), fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("seconds per scene (log)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("AP (%)")
    axes[0].legend(loc="best", fontsize=9)
    fig.suptitle(f"{len(report['scenes'])} scenes, {report['proposals']['source']} proposals", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _json_safe(obj):
    """``obj`` with NaN and infinite floats as None (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """report.json, report.md and ap_vs_time.png in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "plot": out_dir / "ap_vs_time.png"}
    write_text_atomic(paths["json"], json.dumps(_json_safe(report), indent=1, allow_nan=False))
    write_text_atomic(paths["markdown"], format_markdown(report))
    plot_ap_vs_time(report, paths["plot"])
    return paths


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", nargs="+", default=[STUDENT, "teacher", "baseline"], choices=ALL_METHODS,
                   metavar="METHOD", help=f"methods, in report order, from {', '.join(ALL_METHODS)} "
                   "(the teacher variants are the ablation); default: %(default)s")
    p.add_argument("--scenes", type=Path, nargs="+", required=True, help="scene folders or folders of scenes")
    p.add_argument("--bundle", type=Path, default=Path("models/folk-synth"), help="model bundle folder")
    p.add_argument("--proposals", choices=PROPOSAL_SOURCES, default="mask3d",
                   help="shared proposals: the bundle's Mask3D, or the GT instances")
    p.add_argument("--vocabulary", default="synthetic", help="synthetic, scannet200 or comma-separated names")
    p.add_argument("--every", type=int, default=TeacherConfig.frame_stride, help="frame stride of teacher/baseline")
    p.add_argument("--clip-image-size", type=int, nargs=2, default=list(TeacherConfig.clip_image_size),
                   metavar=("H", "W"), help="teacher/baseline CLIP input size in pixels")
    p.add_argument("--out", type=Path, default=Path("out/evaluate"), help="output folder")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--sparse-backend", default="torch", choices=("torch", "minkowski", "auto"),
                   help="Mask3D sparse convolutions")
    p.add_argument("--warmup", type=int, default=1, help="scenes run once untimed before measuring")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.every < 1 or args.threads < 0 or args.warmup < 0:
        p.error("--every must be >= 1, --threads and --warmup >= 0")
    return args


def run_cli(argv: list[str] | None = None) -> dict:
    """CLI entry point: run, write the report files, print the markdown summary; returns the report."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        cfg = HarnessConfig(methods=tuple(args.method), proposals=args.proposals, every=args.every,
                            clip_image_size=tuple(args.clip_image_size), warmup=args.warmup)
        vocab = vocabulary(args.vocabulary)
        label_ids_of(vocab)  # every name must be a ScanNet200 class to be scored
        scenes = find_scenes(args.scenes)
        segmenter = Segmenter.from_bundle(args.bundle, device=args.device, sparse_backend=args.sparse_backend)
    except (ValueError, FileNotFoundError) as err:  # BundleError is a ValueError
        sys.exit(f"evaluate: error: {err}")
    report = run(scenes, segmenter, cfg, vocab, args.out, progress=not args.quiet)
    report["config"].update(bundle=str(args.bundle), sparse_backend=args.sparse_backend,
                            argv=list(sys.argv[1:] if argv is None else argv))
    paths = write_report(report, args.out)
    print(format_markdown(report).split("\n## Per class")[0])
    print("wrote " + ", ".join(str(p) for p in paths.values()) + f", {args.out / PRED_DIR}/<method>/")
    return report


def main(argv: list[str] | None = None) -> int:
    """The command line: :func:`run_cli`; 0 when the run completed (errors raise)."""
    run_cli(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
