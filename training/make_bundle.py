"""Assemble a model bundle (``folk_ros.core.bundle``) from what our training pipeline produced.

    python -m training.make_bundle --mask3d runs/mask3d-small/best.pt --clip models-work/clip \\
        --student runs/distill/best.pt --out models/folk-synth [--provenance KEY=FILE.json ...]

* ``mask3d.pt``: the Mask3D trainer's checkpoint, slimmed to ``{format, config, state_dict}`` plus
  its training history (no optimiser state);
* ``clip/``: the open_clip folder written by ``training.clip.train`` (``open_clip_config.json``,
  ``open_clip_model.safetensors`` and its ``manifest.json``; its ``checkpoints/`` are left out);
* ``student.pt``: the distillation trainer's ``best.pt`` without its optimiser-free extras other
  than the training temperature, vocabulary, template and metrics;
* ``text_cache/``: the CLIP text embeddings of the vocabulary (``training.bundle_text``), so a node
  starting with those names needs no CLIP;
* ``manifest.json``: vocabulary, prompt template and temperature taken from the student's
  training (the runtime must score with what the student was trained with), the proposals'
  mask threshold, DBSCAN split distance and NMS IoU (``--mask-threshold``, ``--dbscan-eps``,
  ``--nms-iou``, chosen on validation scenes
  with ``python -m training.mask3d.evaluate``), the sha256 of every
  file, and ``provenance`` — this command, the source files' sha256, and each ``--provenance``
  JSON file (e.g. the metrics of each training stage and the evaluation report).

The bundle is loaded back through :meth:`folk_ros.core.segmenter.Segmenter.from_bundle` before
the command returns, and its size is reported (the repository keeps ``models/`` <= 50 MB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

from folk_ros.core.checkpoint_io import UnsafeCheckpointError, load_weights
from folk_ros.core.bundle import BundleManifest, file_sha256, read_manifest, write_manifest
from folk_ros.core.mask3d.checkpoint import FORMAT as MASK3D_FORMAT
from folk_ros.core.mask3d.config import PostprocessConfig
from folk_ros.core.segmenter import Segmenter
from folk_ros.core.segmenter_config import SegmenterConfig
from folk_ros.core.student import Student
from training.bundle_text import write_bundle_text

CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors", "manifest.json")
STUDENT_EXTRAS = ("tau", "vocabulary", "prompt_template", "point_features", "mask3d_sha256", "clip", "metrics",
                  "train_config", "epoch")
SIZE_BUDGET_MB = 50.0


def _load(path: Path, allow_unsafe: bool = False) -> dict:
    obj = load_weights(path, "cpu", allow_unsafe)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a checkpoint dict")
    return obj


def slim_mask3d(src: Path, dst: Path, allow_unsafe: bool = False) -> dict:
    """Copy a Mask3D checkpoint without optimiser/scheduler/RNG state; returns its history."""
    obj = _load(src, allow_unsafe)
    if obj.get("format") != MASK3D_FORMAT:
        raise ValueError(f"{src}: not a folk_ros Mask3D checkpoint (format={obj.get('format')!r})")
    history = obj.get("history", [])
    torch.save({"format": obj["format"], "config": obj["config"], "state_dict": obj["state_dict"],
                "history": history}, dst)
    return {"history": history, "train_config": obj.get("train_config", {})}


def slim_student(src: Path, dst: Path, allow_unsafe: bool = False) -> dict:
    """Copy the distillation trainer's checkpoint keeping the student and its training facts."""
    obj = _load(src, allow_unsafe)
    Student.from_checkpoint(obj)                       # the same check Segmenter.from_bundle does
    missing = [k for k in ("tau", "vocabulary", "prompt_template", "point_features") if k not in obj]
    if missing:
        raise ValueError(f"{src}: not a distillation checkpoint (missing {missing}); "
                         f"train the student with python -m training.distill.train")
    torch.save({k: obj[k] for k in ("format", "config", "state_dict", *STUDENT_EXTRAS) if k in obj}, dst)
    return obj


def copy_clip(src: Path, dst: Path) -> None:
    missing = [name for name in CLIP_FILES[:2] if not (src / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{src} is not an open_clip folder written by training.clip.train "
                                f"(missing {missing})")
    dst.mkdir(parents=True, exist_ok=True)
    for name in CLIP_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def folder_mb(path: Path) -> float:
    """Size of the files under ``path`` in MB (10^6 bytes, as the models/ budget counts)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def make_bundle(mask3d: Path, clip: Path, student: Path, out: Path, provenance: dict[str, Path],
                command: str, dbscan_eps: float = SegmenterConfig.dbscan_eps, nms_iou: float = SegmenterConfig.nms_iou,
                mask_threshold: float = SegmenterConfig.mask_threshold, allow_unsafe: bool = False) -> BundleManifest:
    """Write the bundle into ``out`` (replacing what is there) and load it back; returns its manifest."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    mask3d_info = slim_mask3d(mask3d, out / "mask3d.pt", allow_unsafe)
    copy_clip(clip, out / "clip")
    student_obj = slim_student(student, out / "student.pt", allow_unsafe)
    if student_obj.get("mask3d_sha256") not in (None, file_sha256(mask3d)):
        raise ValueError(f"{student} was distilled from another Mask3D checkpoint than {mask3d} "
                         f"(sha256 {student_obj['mask3d_sha256'][:12]}...)")
    prov = {"command": command,
            "sources": {name: {"path": str(p), "sha256": file_sha256(p)}
                        for name, p in (("mask3d", mask3d), ("clip", clip / CLIP_FILES[1]), ("student", student))},
            "mask3d_training": mask3d_info,
            "student_training": {k: student_obj[k] for k in ("metrics", "train_config", "epoch") if k in student_obj}}
    for key, path in provenance.items():
        prov[key] = json.loads(Path(path).read_text())
    segmenter = SegmenterConfig(prompt_template=student_obj["prompt_template"], temperature=float(student_obj["tau"]),
                                point_features=student_obj["point_features"], dbscan_eps=float(dbscan_eps),
                                nms_iou=float(nms_iou), mask_threshold=float(mask_threshold))
    manifest = BundleManifest(root=out, vocabulary=tuple(student_obj["vocabulary"]), segmenter=segmenter,
                              provenance=prov)
    text_cache = write_bundle_text(manifest, file_sha256(out / "clip"), command)   # the vocabulary's text
    manifest = replace(manifest, provenance={**prov, "text_cache": text_cache})
    write_manifest(manifest)
    Segmenter.from_bundle(out, device="cpu")          # loads, checks every sha256
    return read_manifest(out, verify=False)           # as written, its sha256 included (just checked)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.make_bundle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mask3d", type=Path, required=True, help="Mask3D trainer checkpoint (best.pt)")
    p.add_argument("--clip", type=Path, required=True, help="open_clip folder from training.clip.train")
    p.add_argument("--student", type=Path, required=True, help="distillation checkpoint (best.pt)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder (replaced)")
    p.add_argument("--dbscan-eps", type=float, default=SegmenterConfig.dbscan_eps,
                   help="split every Mask3D proposal into parts further apart than this many metres (Mask3D's "
                        "DBSCAN; choose it on validation scenes with python -m training.mask3d.evaluate); 0: no split")
    p.add_argument("--mask-threshold", type=float, default=SegmenterConfig.mask_threshold,
                   help="a proposal's mask: the points whose Mask3D mask probability exceeds this (Mask3D: 0.5)")
    p.add_argument("--nms-iou", type=float, default=SegmenterConfig.nms_iou,
                   help="class-agnostic mask NMS IoU of the proposals (FOLK's paper: 0.9)")
    p.add_argument("--provenance", nargs="*", default=[], metavar="KEY=FILE.json",
                   help="JSON files recorded in the manifest's provenance under KEY")
    p.add_argument("--allow-unsafe-checkpoint", action="store_true",
                   help="load checkpoints that hold more than weights by full unpickling, which can run code from "
                        "the file (only files you trust); the bundle's files are written weights-only either way")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    provenance = {}
    for item in args.provenance:
        key, sep, path = item.partition("=")
        if not sep or not key or not Path(path).is_file():
            print(f"make_bundle: --provenance expects KEY=FILE.json with an existing file, got {item!r}",
                  file=sys.stderr)
            return 2
        provenance[key] = Path(path)
    command = "python -m training.make_bundle " + " ".join(sys.argv[1:] if argv is None else argv)
    try:                                               # the runtime's own checks of the settings
        PostprocessConfig.class_agnostic(args.dbscan_eps, args.nms_iou, mask_threshold=args.mask_threshold)
    except ValueError as e:
        print(f"make_bundle: {e}", file=sys.stderr)
        return 2
    try:
        manifest = make_bundle(args.mask3d, args.clip, args.student, args.out, provenance, command,
                               args.dbscan_eps, args.nms_iou, args.mask_threshold, args.allow_unsafe_checkpoint)
    except UnsafeCheckpointError as e:
        print(f"make_bundle: {e} (here: --allow-unsafe-checkpoint)", file=sys.stderr)
        return 2
    size = folder_mb(args.out)
    print(f"bundle {args.out}: {size:.1f} MB, vocabulary of {len(manifest.vocabulary)} names, "
          f"segmenter settings {manifest.segmenter.to_dict()}")
    if size > SIZE_BUDGET_MB:
        print(f"warning: over the {SIZE_BUDGET_MB:.0f} MB the repository allows for models/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
