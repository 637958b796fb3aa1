"""An UNTRAINED model bundle (random, seeded weights) in the real bundle format, at two sizes.

``small``: Mask3D-small, the 128-d folk-tiny-vit CLIP, 4 names: the test double of the test suite.
``real``: the shapes a robot team runs, without downloading anything: the official ScanNet200 Mask3D
(Res16UNet34C, 39.66 M parameters), open_clip's ViT-L-14-336 (768-d, 428 M parameters, ~1.7 GB on disk), a
96 -> 512 -> 768 student (Eq. 7) and ScanNet200's 200 names. The cost of every stage is that of real weights;
the labels mean nothing. Written to a folder of the caller's choosing (never commit one: ``models/`` holds
trained bundles only).

    python -m training.untrained_bundle --size real --out /tmp/real-size-bundle [--input-features xyz] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from folk_ros.core.bundle import BundleManifest, write_manifest
from folk_ros.core.clip import ClipModel
from folk_ros.core.mask3d.checkpoint import save_checkpoint
from folk_ros.core.mask3d.config import INPUT_FEATURES, preset
from folk_ros.core.mask3d.model import Mask3D
from folk_ros.core.student import Student, StudentConfig
from training.data import scannet200
from training.make_bundle import folder_mb

SMALL_VOCABULARY = ("chair", "table", "lamp", "box")
# size -> (Mask3D preset, open_clip architecture, student hidden width)
SIZES = {"small": ("small", "folk-tiny-vit", 64), "real": ("scannet200", "ViT-L-14-336", 512)}


def make_untrained_bundle(root: Path, seed: int = 0, input_features: str = "xyzrgb", size: str = "small") -> Path:
    """Write an untrained bundle of ``size`` (see the module docstring; its Mask3D reads ``input_features``)
    into ``root``; returns ``root``."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    mask3d_preset, clip_arch, hidden = SIZES[size]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    mask3d = Mask3D(replace(preset(mask3d_preset), input_features=input_features))
    save_checkpoint(root / "mask3d.pt", mask3d)
    clip = ClipModel.from_config(clip_arch, device="cpu", seed=seed)
    clip.save(root / "clip")
    student = Student(StudentConfig(in_dim=mask3d.cfg.backbone.planes[-1], hidden_dim=hidden, out_dim=clip.embed_dim))
    torch.save(student.to_checkpoint(), root / "student.pt")
    vocabulary = SMALL_VOCABULARY if size == "small" else scannet200.class_labels()
    write_manifest(BundleManifest(root=root, vocabulary=vocabulary,
                                  provenance={"note": f"UNTRAINED ({size} shapes): random weights, seed {seed}"}))
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.untrained_bundle", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="real", help="model shapes (default: real)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--input-features", choices=INPUT_FEATURES, default="xyzrgb", help="what the Mask3D reads")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the random weights")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    make_untrained_bundle(args.out, args.seed, args.input_features, args.size)
    print(f"wrote the untrained {args.size}-size bundle {args.out} ({folder_mb(args.out):,.0f} MB) in "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
