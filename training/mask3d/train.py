"""Class-agnostic Mask3D training on ScanNet-layout scenes (FOLK's proposal network).

    python -m training.mask3d.train --train data/synth/train --val data/synth/val \\
        --out runs/mask3d-small --preset small --epochs 30 --seed 0

One scene per step; Hungarian matching + BCE/dice/CE set criterion with auxiliary
losses per decoder layer (:mod:`training.mask3d.losses`); AdamW with a one-cycle
schedule; seeded augmentation (:mod:`training.mask3d.augment`). After every epoch the
model is evaluated with the ScanNet protocol (class-agnostic: every GT object is one
class) and ``last.pt`` / ``best.pt`` are written atomically; ``--resume`` continues
from ``last.pt`` (model, optimiser, schedule, RNG and epoch).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from folk_ros.core.checkpoint_io import load_weights
from folk_ros.core.mask3d.checkpoint import load_checkpoint, save_checkpoint
from folk_ros.core.mask3d.config import INPUT_FEATURES, PRESETS, PostprocessConfig, preset
from folk_ros.core.mask3d.model import Mask3D
from training.atomic import write_json_atomic
from training.cli import add_settings, setting, settings_from
from training.rng import rng_state, set_rng_state
from training.evaluate.instance_ap import EvalResult
from training.mask3d.augment import AugmentConfig
from training.data.scenes import find_scenes, has_mesh_gt
from training.mask3d.data import Scene, load_scene, make_sample
from training.mask3d.evaluate import class_agnostic_results
from training.mask3d.losses import CriterionConfig, SetCriterion
from training.mask3d.matcher import MatcherConfig

log = logging.getLogger("training.mask3d.train")


@dataclass(frozen=True)
class TrainConfig:
    """One Mask3D training run; every field is a flag of ``python -m training.mask3d.train``."""

    train: tuple[str, ...] = setting((), "folders of training scenes (ScanNet layout)", nargs="+", required=True)
    val: tuple[str, ...] = setting((), "folders of validation scenes", nargs="*")
    out: str = setting("runs/mask3d", "folder of the checkpoints (best.pt, last.pt) and metrics.json")
    preset: str = setting("small", "Mask3D preset: small (for CPU) or scannet200 (the official model)",
                          choices=PRESETS)
    epochs: int = setting(30, "passes over the training scenes")
    lr: float = setting(1e-3, "one-cycle peak learning rate")
    weight_decay: float = setting(1e-4, "AdamW weight decay")
    grad_clip: float = setting(1.0, "max gradient norm (0: off)")
    augment: bool = setting(True, "turn off the training augmentations (rotation about z, scale, flips, jitter, "
                                  "colour)")
    seed: int = setting(0, "seed of the data order, augmentations and weights")
    resume: bool = setting(False, "continue from <out>/last.pt")
    device: str = setting("cpu", "cpu, cuda or cuda:N")
    max_val_scenes: int = setting(0, "validate on at most this many scenes (0: all)")
    threads: int = setting(1, "torch CPU threads (0: torch's default). One thread is faster than two on a shared "
                              "2-core machine for the sparse ops (bench/bench_sparse_ops.py)")
    voxel_size: float = setting(0.0, "voxel edge in metres (0: the preset's 2 cm); saved with the model config")
    bn_scenes: int = setting(8, "training scenes over which BatchNorm statistics are recomputed after every "
                                "epoch (precise BN; 0: keep the momentum running averages)")
    match_points: int = setting(-1, "points sampled (uniformly, per step) for the Hungarian matching costs; -1: "
                                    "all points (Mask3D's ScanNet setting). The matching costs over all points are "
                                    "most of a CPU step")
    init: str = setting("", "start from this checkpoint's weights (e.g. an earlier run's best.pt) with a fresh "
                            "optimiser and schedule; the preset and voxel size must match")
    dbscan_eps: float = setting(0.0, "validate (and pick best.pt) with Mask3D's DBSCAN split of every proposal into "
                                     "parts further apart than this many metres, as deployed (see python -m "
                                     "training.mask3d.evaluate); 0: no split")
    mask_threshold: float = setting(0.5, "validate with proposal masks where the mask probability exceeds this "
                                         "(Mask3D: 0.5)")
    input_features: str = setting("xyzrgb", "what the model reads per point: xyzrgb (colour) or xyz (geometry only, "
                                            "LiDAR); saved with the model config", choices=INPUT_FEATURES)


def class_agnostic_ap(model: Mask3D, scenes: list[Scene], post: PostprocessConfig | None = None) -> EvalResult:
    """ScanNet-protocol AP of the model's proposals, every GT object being one class."""
    return class_agnostic_results(model, scenes, [post or PostprocessConfig.class_agnostic()])[0][0]


@torch.no_grad()
def recalibrate_batchnorm(model: Mask3D, samples: list) -> int:
    """Precise BatchNorm statistics: recompute every BatchNorm's running mean/var as the plain
    average over ``samples`` (un-augmented training scenes), forward passes in train mode.

    Mask3D's BatchNorms keep running averages with momentum 0.02 (``BackboneConfig.bn_momentum``),
    which lag far behind the weights over the few hundred steps a CPU run affords (the official
    model trains for 600 epochs): after 80 steps 20 % of the running statistics are still the
    initial (0, 1), and the eval-mode model loses what the train-mode model already does.
    Returns the number of samples used; the model's train/eval mode and momenta are restored.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or not samples:
        return 0
    momenta, was_training = [bn.momentum for bn in bns], model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None                      # cumulative moving average: the exact mean over samples
    model.train()
    try:
        for s in samples:
            model(s.coords, s.feats, s.raw_xyz)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    return len(samples)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: TrainConfig) -> dict:
    """Run the training; returns the final metrics dict (also in ``<out>/metrics.json``)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    dev = torch.device(cfg.device)
    val_post = PostprocessConfig.class_agnostic(cfg.dbscan_eps, mask_threshold=cfg.mask_threshold)  # checked now
    train_scenes = [load_scene(p) for p in tqdm(find_scenes(cfg.train, has_mesh_gt), desc="load train")]
    val_dirs = find_scenes(cfg.val, has_mesh_gt) if cfg.val else []
    if cfg.max_val_scenes:
        val_dirs = val_dirs[:cfg.max_val_scenes]
    val_scenes = [load_scene(p) for p in val_dirs]

    model_cfg = replace(preset(cfg.preset), num_classes=2, input_features=cfg.input_features)  # object / no-object
    if cfg.voxel_size > 0:
        model_cfg = replace(model_cfg, voxel_size=cfg.voxel_size)
    model = Mask3D(model_cfg).to(dev)
    if cfg.init:
        start, _ = load_checkpoint(cfg.init, map_location=str(dev))   # strict: a mismatch raises
        if start.cfg != model_cfg:
            raise ValueError(f"--init {cfg.init}: its model config differs from this run's "
                             f"(preset/voxel size/input features)")
        model.load_state_dict(start.state_dict())
    criterion = SetCriterion(CriterionConfig(num_classes=1,
                                             matcher=MatcherConfig(num_points=cfg.match_points))).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * len(train_scenes)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1))
    history, start_epoch, best = [], 0, -math.inf
    last = out / "last.pt"
    if cfg.resume and last.exists():
        ckpt = load_weights(last, dev, what="Mask3D training state")
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"], rng)
        start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best_ap50"]
        log.info("resumed from %s at epoch %d", last, start_epoch)

    augment = AugmentConfig() if cfg.augment else None
    bn_samples = [make_sample(s, model_cfg) for s in train_scenes[:cfg.bn_scenes]]
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0, losses = time.perf_counter(), []
        order = rng.permutation(len(train_scenes))
        bar = tqdm(order, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for i in bar:
            sample = make_sample(train_scenes[i], model_cfg, rng, augment)
            outputs = model(sample.coords.to(dev), sample.feats.to(dev), sample.raw_xyz.to(dev))
            terms = criterion(outputs, [{"labels": sample.labels.to(dev), "masks": sample.masks.to(dev)}])
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append({k: float(v.detach()) for k, v in terms.items() if "_aux" not in k})
            bar.set_postfix(loss=f"{losses[-1]['loss']:.3f}")
        row = {"epoch": epoch + 1, "seconds": time.perf_counter() - t0,
               **{k: float(np.mean([x[k] for x in losses])) for k in losses[0]}}
        recalibrate_batchnorm(model, bn_samples)
        if val_scenes:
            model.eval()
            res = class_agnostic_ap(model, val_scenes, val_post)
            row.update({f"val_{k}": v for k, v in res.mean.items()})
        history.append(row)
        log.info("epoch %d: %s", epoch + 1, json.dumps({k: round(v, 4) for k, v in row.items()}))
        score = row.get("val_ap50", -row["loss"])
        extra = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(rng),
                 "epoch": epoch, "history": history, "best_ap50": max(best, score), "train_config": asdict(cfg)}
        save_checkpoint(last, model, **extra)
        if score > best:
            best = score
            save_checkpoint(out / "best.pt", model, history=history, train_config=asdict(cfg))
    metrics = {"history": history, "best": best, "train_scenes": len(train_scenes), "val_scenes": len(val_scenes)}
    write_json_atomic(out / "metrics.json", metrics, indent=2)
    return metrics


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m training.mask3d.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(p, TrainConfig)
    return settings_from(TrainConfig, p.parse_args(argv))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    metrics = train(parse_args(argv))
    print(json.dumps(metrics["history"][-1] if metrics["history"] else {}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
