"""Train the synthetic-world CLIP on rendered frames (issue 4, section 1).

    python -m training.clip.train --scenes data/clip/train --val-scenes data/clip/val \\
        --test-scenes data/clip/test --out models-work/clip --minutes 40 --seed 0

No pretrained CLIP weights exist on our machines, so FOLK's teacher gets a small open_clip
model trained here from random weights (``ClipModel.from_config('folk-tiny-vit')``) with two
objectives over the training vocabulary (the object classes of the training scenes plus the
background classes wall/floor/ceiling as negatives), prompts ``"a {name} in the scene"``:

(a) contrastive image-text on object views (:mod:`training.clip.dataset` crops). Many crops
    share a class, so instance-level InfoNCE would treat same-class crops as negatives. We
    use the class-level form instead: image->text is a cross-entropy over the K class
    prompts (every class of the vocabulary is a negative, not only those in the batch);
    text->image takes, for each class present in the batch, a softmax over the batch's crops
    with a uniform target over that class's crops (multi-positive, so same-class crops are
    never negatives). The crop loss is the mean of the two directions.
(b) dense: MaskCLIP per-patch features (the value path of the last block, the same function
    :func:`folk_ros.core.maskclip.maskclip_dense_features` that ``ClipModel.dense_features``
    runs, here with gradients) of whole frames at the teacher's CLIP input size,
    mask-pooled over each GT instance mask (Eq. 6, :func:`pool_mask_features`, without the
    perceptron), L2-normalised and classified by cross-entropy over the class prompts.

Both use CLIP's learnt temperature (``logit_scale``, clamped to 100). AdamW (no decay on
gains, biases and the temperature, as open_clip), linear warm-up then a cosine decay over
the run's progress: the larger of steps / (epochs * epoch_steps) and elapsed / --minutes, so
a wall-clock budget ends the run at the bottom of the schedule. An "epoch" is
``--epoch-steps`` optimisation steps (a pass over all crops would outlast the budget on
CPU); after each one the held-out scenes are evaluated (zero-shot crop accuracy over the
object vocabulary, and mask-pooled dense accuracy, what the teacher uses), ``checkpoints/
last.pt`` is written atomically (``--resume`` continues from it: model, optimiser, step,
elapsed time, RNG) and the best model so far (mean of the two validation accuracies) is
saved as an open_clip folder in ``--out`` (``ClipModel('local-dir:OUT')`` loads it). At the
end the saved model is reloaded through that path, evaluated on the validation and test
scenes (also against the whole ScanNet200 vocabulary minus background, the teacher's usual
setting), and ``manifest.json`` records the command, seeds, data seeds, the weights' sha256,
metrics with chance levels, and the vocabulary. ``--scannet200-negatives`` adds the ScanNet200
names that no training instance has to the text side of both losses (never as targets).

This module is the loop, its state on disk and the CLI; the vocabulary and text embeddings are in
:mod:`training.clip.vocabulary`, the losses in :mod:`training.clip.losses`, the batches in
:mod:`training.clip.batches`, the held-out evaluation in :mod:`training.clip.evaluation`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from folk_ros.core.bundle import file_sha256
from folk_ros.core.checkpoint_io import load_weights
from folk_ros.core.clip import DEFAULT_TEMPLATE, ClipModel
from folk_ros.core.clip_weights import OPEN_CLIP_CONFIG_NAME, WEIGHTS_FILE_NAME
from folk_ros.core.maskclip import maskclip_dense_features
from training.atomic import torch_save_atomic, write_json_atomic
from training.cli import add_settings, setting, settings_from
from training.rng import rng_state, set_rng_state
from training.clip.batches import crop_input, crop_weights, dense_input, sample_frames
from training.clip.dataset import BACKGROUND_CLASSES, CropJitter, ViewConfig, ViewSet, load_views
from training.clip.evaluation import evaluate, make_eval_set, selection_score
from training.clip.losses import crop_contrastive_loss, dense_mask_loss
from training.clip.vocabulary import build_vocabulary, scannet200_object_names, text_embeddings, tokenize
from training.data.scenes import find_scenes, has_instance_images
from training.teacher.config import TeacherConfig

log = logging.getLogger("training.clip.train")
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
MANIFEST = "manifest.json"
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run; every field is a flag of ``python -m training.clip.train``."""

    scenes: tuple[str, ...] = setting((), "training scene folders (or parents of them)", nargs="+", required=True)
    val_scenes: tuple[str, ...] = setting((), "held-out scenes: per-epoch eval and model selection", nargs="+",
                                          required=True)
    test_scenes: tuple[str, ...] = setting((), "held-out scenes for the final report only", nargs="*")
    out: str = setting("models-work/clip", "output folder (open_clip folder + manifest.json)")
    model: str = setting("folk-tiny-vit", "architecture: folk_ros config name, open_clip name or JSON path",
                         flag="--config")
    init: str = setting("", "open_clip folder to start from (e.g. an earlier run's --out): continues training its "
                            "weights on these scenes; empty: random weights")
    minutes: float = setting(40.0, "wall-clock budget of training + per-epoch evals (0: none)")
    epochs: int = setting(0, "epochs of --epoch-steps steps (0: until the time budget)")
    epoch_steps: int = setting(30, "optimisation steps between evaluations")
    crop_batch: int = setting(24, "object views per step (objective a, the crop contrastive loss)")
    frame_batch: int = setting(2, "whole frames per step (objective b, the dense mask-pooled loss)")
    crop_weight: float = setting(1.0, "weight of the crop loss")
    dense_weight: float = setting(1.0, "weight of the dense loss")
    lr: float = setting(1e-3, "peak learning rate (AdamW)")
    min_lr_ratio: float = setting(0.05, "final learning rate = lr x this (cosine decay)")
    warmup_steps: int = setting(20, "steps of linear warm-up")
    weight_decay: float = setting(0.1, "AdamW weight decay (not on gains, biases and the temperature)")
    grad_clip: float = setting(1.0, "max gradient norm (0: off)")
    template: str = setting(DEFAULT_TEMPLATE, "CLIP prompt of the class names, {} = the name")
    dense_size: tuple[int, int] = setting(TeacherConfig().clip_image_size, "(H, W) pixels of the dense input",
                                          nargs=2, metavar=("H", "W"))
    class_balance: float = setting(0.5, "crop sampling weight ~ views_per_class ** -this (0: uniform)")
    background: tuple[str, ...] = setting(BACKGROUND_CLASSES, "background classes: text-side negatives, never "
                                                              "object views", nargs="+")
    scannet200_negatives: bool = setting(False, "add the ScanNet200 names absent from the training set as text-only "
                                                "negatives")
    every: int = setting(1, "training frames: every n-th")
    val_every: int = setting(3, "held-out frames: every n-th")
    min_pixels: int = setting(400, "smallest visible mask (pixels) giving a view or a dense mask")
    context: float = setting(0.15, "crop margin at evaluation, as a fraction of the box side")
    max_eval_views: int = setting(300, "held-out crops per epoch evaluation (a fixed seeded subset)")
    max_eval_frames: int = setting(40, "held-out frames per epoch dense evaluation (evenly spaced)")
    final_eval_views: int = setting(1000, "held-out crops of the final evaluation of the saved model")
    final_eval_frames: int = setting(100, "held-out frames of the final evaluation of the saved model")
    seed: int = setting(0, "seed of the weights, the sampling and the evaluation subsets")
    threads: int = setting(0, "torch CPU threads (0: torch's default)")
    device: str = setting("cpu", "cpu, cuda or cuda:N")
    resume: bool = setting(False, "continue from <out>/checkpoints/last.pt")

    def __post_init__(self) -> None:
        if not self.scenes or not self.val_scenes:
            raise ValueError("give training scenes and held-out (validation) scenes")
        if self.minutes <= 0 and self.epochs <= 0:
            raise ValueError("give a time budget (minutes > 0) and/or a number of epochs (> 0)")
        for name in ("epoch_steps", "crop_batch", "frame_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.crop_weight < 0 or self.dense_weight < 0 or self.crop_weight + self.dense_weight == 0:
            raise ValueError("crop_weight and dense_weight must be >= 0 and not both 0")
        object.__setattr__(self, "dense_size", tuple(int(v) for v in self.dense_size))   # frozen: normalised once
        object.__setattr__(self, "background", tuple(self.background))


# --------------------------------------------------------------------------- schedule


def progress(step: int, total_steps: int, elapsed: float, budget_s: float) -> float:
    """Fraction of the run done: the larger of step / total_steps and elapsed / budget_s (0 = unset)."""
    parts = [step / total_steps if total_steps > 0 else 0.0, elapsed / budget_s if budget_s > 0 else 0.0]
    return max(parts)


def learning_rate(step: int, frac: float, cfg: TrainConfig) -> float:
    """Learning rate at `step` and run fraction `frac`.

    1. linear warm-up over the first ``warmup_steps`` steps;
    2. cosine decay from ``lr`` to ``lr * min_lr_ratio`` as `frac` goes from 0 to 1.
    """
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    low = cfg.lr * cfg.min_lr_ratio
    cosine = low + 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0))) * (cfg.lr - low)
    return warm * cosine


# --------------------------------------------------------------------------- state on disk


def save_model(clip: ClipModel, out: Path) -> str:
    """Save `clip` as an open_clip folder in `out` (files renamed into place); returns the weights' sha256."""
    tmp = out / ".saving"
    shutil.rmtree(tmp, ignore_errors=True)
    clip.save(tmp)
    for name in (OPEN_CLIP_CONFIG_NAME, WEIGHTS_FILE_NAME):
        os.replace(tmp / name, out / name)
    tmp.rmdir()
    return file_sha256(out / WEIGHTS_FILE_NAME)


def data_provenance(views: ViewSet, roots: list[str]) -> dict:
    """Scene ids, generator seeds (from synth_meta.json where present) and counts of a ViewSet."""
    seeds = {}
    for d in find_scenes(roots, has_instance_images):
        meta = d / "synth_meta.json"
        if meta.exists():
            m = json.loads(meta.read_text(encoding="utf-8"))
            seeds[d.name] = {"run_seed": m.get("run_seed"), "index": m.get("index"), "seed": m.get("seed")}
    run_seeds = sorted({v["run_seed"] for v in seeds.values() if v["run_seed"] is not None})
    return {"roots": [str(r) for r in roots], "scenes": views.scene_ids, "generator_run_seeds": run_seeds,
            "scene_seeds": seeds, "frames": len(views.frames), "every": views.config.every,
            "object_views": len(views), "views_per_class": views.class_counts()}


# --------------------------------------------------------------------------- training


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's split: no weight decay on gains, biases, norms and the temperature."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def train_step(clip: ClipModel, tokens: torch.Tensor, train: ViewSet, cfg: TrainConfig, rng: np.random.Generator,
               weights: np.ndarray, frame_pool: np.ndarray, vocab_index: dict[str, int]) -> dict[str, torch.Tensor]:
    """Losses of one random batch (crops + frames); returns named terms, "loss" the weighted total."""
    model = clip.model
    dev = clip.device
    text = text_embeddings(model, tokens)                                              # (K, D)
    scale = model.logit_scale.exp()
    terms: dict[str, torch.Tensor] = {}
    total = torch.zeros((), device=dev)
    if cfg.crop_weight > 0:
        idx = rng.choice(len(train), cfg.crop_batch, p=weights)
        x = crop_input(train.crops(idx, rng, CropJitter()), clip.image_mean, clip.image_std, dev)
        image = F.normalize(model.encode_image(x).float(), dim=-1)                     # (B, D)
        y = torch.tensor([vocab_index[n] for n in train.name[idx]], device=dev)
        crop = crop_contrastive_loss(image, text, y, scale)
        terms.update(crop_i2t=crop["i2t"], crop_t2i=crop["t2i"], crop=crop["loss"])
        total = total + cfg.crop_weight * crop["loss"]
    if cfg.dense_weight > 0:
        frames = rng.choice(frame_pool, cfg.frame_batch, replace=False)
        colors, masks, index, targets = sample_frames(train, frames, rng, vocab_index, cfg.min_pixels, flip=True)
        feats = maskclip_dense_features(model.visual, dense_input(colors, cfg.dense_size, clip.image_mean,
                                                                  clip.image_std, dev))  # (F, D, h, w)
        dense = dense_mask_loss(feats, masks.to(dev), index.to(dev), targets.to(dev), text, scale)
        terms.update(dense=dense["loss"], dense_acc=dense["acc"])
        total = total + cfg.dense_weight * dense["loss"]
    terms["loss"] = total
    terms["scale"] = scale.detach()
    return terms


def train(cfg: TrainConfig, argv: list[str] | None = None) -> dict:
    """Run (or resume) a training; returns the manifest (also written to ``<out>/manifest.json``)."""
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    if cfg.init:
        clip = ClipModel(f"local-dir:{cfg.init}", device=cfg.device)   # warm start: its weights and architecture
    else:
        clip = ClipModel.from_config(cfg.model, device=cfg.device, seed=cfg.seed)
    model = clip.model
    size_h, size_w = clip.image_size
    if size_h != size_w:
        raise ValueError(f"object views are square; {cfg.model} takes {size_h}x{size_w} images")
    view_cfg = ViewConfig(every=cfg.every, min_pixels=cfg.min_pixels, context=cfg.context, crop_size=size_h,
                          background=cfg.background)
    train_views = load_views(find_scenes(cfg.scenes, has_instance_images), view_cfg, desc="train scenes")
    held_cfg = replace(view_cfg, every=cfg.val_every)
    val_views = load_views(find_scenes(cfg.val_scenes, has_instance_images), held_cfg, desc="val scenes")
    test_views = (load_views(find_scenes(cfg.test_scenes, has_instance_images), held_cfg, desc="test scenes")
                  if cfg.test_scenes else None)
    vocab = build_vocabulary(train_views, cfg.background, cfg.scannet200_negatives)
    vocab_index = vocab.index()
    val_set = make_eval_set(val_views, vocab.objects, cfg.max_eval_views, cfg.max_eval_frames)
    load_s = time.perf_counter() - t_start
    log.info("vocabulary: %d object classes + background %s + %d text negatives; data loaded in %.0f s",
             len(vocab.objects), vocab.background, len(vocab.negatives), load_s)

    tokens = tokenize(clip, vocab.names, cfg.template)
    obj_tokens = tokenize(clip, vocab.objects, cfg.template)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    weights = crop_weights(train_views, cfg.class_balance)
    frame_pool = np.unique(train_views.frame)  # frames with at least one object view
    if len(frame_pool) < cfg.frame_batch:
        raise ValueError(f"only {len(frame_pool)} training frames with objects for frame_batch={cfg.frame_batch}")

    step, epoch, elapsed, history, best, best_epoch, sha = 0, 0, 0.0, [], -math.inf, None, None
    last = out / CHECKPOINT_DIR / LAST
    if cfg.resume and last.exists():
        ck = load_weights(last, clip.device, what="CLIP training state")
        if tuple(ck["vocabulary"]) != vocab.names or ck["config"]["model"] != cfg.model:
            raise ValueError(f"{last} was trained with another vocabulary or model; start a fresh --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        set_rng_state(ck["rng"], rng)
        step, epoch, elapsed, history = ck["step"], ck["epoch"], ck["elapsed"], ck["history"]
        best, best_epoch, sha = ck["best"], ck["best_epoch"], ck.get("sha256")
        log.info("resumed from %s at step %d (epoch %d, %.1f min done)", last, step, epoch, elapsed / 60)

    budget_s = cfg.minutes * 60.0
    total_steps = cfg.epochs * cfg.epoch_steps
    done = progress(step, total_steps, elapsed, budget_s) >= 1.0
    t_resume = time.perf_counter() - elapsed
    while not done:
        model.train()
        sums: dict[str, float] = {}
        n = 0
        t_epoch = time.perf_counter()
        bar = tqdm(range(cfg.epoch_steps), desc=f"epoch {epoch + 1}", leave=False, unit="step")
        for _ in bar:
            frac = progress(step, total_steps, time.perf_counter() - t_resume, budget_s)
            if frac >= 1.0:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = learning_rate(step, frac, cfg)
            terms = train_step(clip, tokens, train_views, cfg, rng, weights, frame_pool, vocab_index)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            step += 1
            n += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if n == 0:
            break
        epoch += 1
        train_s = time.perf_counter() - t_epoch
        with torch.no_grad():
            text = text_embeddings(model.eval(), obj_tokens)
        metrics = evaluate(clip, text, vocab.objects, val_set, cfg.dense_size, cfg.min_pixels)
        row = {"epoch": epoch, "step": step, "lr": opt.param_groups[0]["lr"], "train_seconds": train_s,
               "eval_seconds": time.perf_counter() - t_epoch - train_s,
               **{f"train_{k}": v / n for k, v in sums.items()},
               "val_crop_acc": metrics["crop"]["acc"], "val_crop_mean_class_acc": metrics["crop"]["mean_class_acc"],
               "val_dense_acc": metrics["dense"]["acc"],
               "val_dense_mean_class_acc": metrics["dense"]["mean_class_acc"]}
        history.append(row)
        log.info("epoch %d: %s", epoch, json.dumps({k: round(v, 4) for k, v in row.items()}))
        score = selection_score(metrics)
        if score > best:
            best, best_epoch = score, epoch
            sha = save_model(clip, out)
        elapsed = time.perf_counter() - t_resume
        torch_save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(rng),
                           "step": step, "epoch": epoch, "elapsed": elapsed, "history": history, "best": best,
                           "best_epoch": best_epoch, "sha256": sha, "vocabulary": list(vocab.names),
                           "config": asdict(cfg)}, last)
        done = done or progress(step, total_steps, elapsed, budget_s) >= 1.0
    train_total_s = time.perf_counter() - t_resume
    if sha is None:
        raise RuntimeError("no epoch finished: nothing was saved (raise --minutes or --epochs)")

    # The artefact, reloaded through the path a real open_clip checkpoint takes.
    t_final = time.perf_counter()
    saved = ClipModel(f"local-dir:{out.resolve()}", device=cfg.device)
    text = saved.encode_text(list(vocab.objects), template=cfg.template)
    val_final = make_eval_set(val_views, vocab.objects, cfg.final_eval_views, cfg.final_eval_frames)
    final = {"val": evaluate(saved, text, vocab.objects, val_final, cfg.dense_size, cfg.min_pixels)}
    if test_views is not None:
        test_set = make_eval_set(test_views, vocab.objects, cfg.final_eval_views, cfg.final_eval_frames)
        final["test"] = evaluate(saved, text, vocab.objects, test_set, cfg.dense_size, cfg.min_pixels)
    # the teacher's setting: the same views scored against the whole ScanNet200 vocabulary
    wide = scannet200_object_names(cfg.background)
    if set(vocab.objects) <= set(wide):
        final["scannet200_vocabulary"] = evaluate(saved, saved.encode_text(list(wide), template=cfg.template), wide,
                                                  test_set if test_views is not None else val_final,
                                                  cfg.dense_size, cfg.min_pixels)
    final_s = time.perf_counter() - t_final

    argv = list(sys.argv[1:] if argv is None else argv)
    manifest = {
        "what": "synthetic-world CLIP for the FOLK teacher (issue 4, section 1); trained on rendered frames only",
        "command": "python -m training.clip.train " + shlex.join(argv),
        "seed": cfg.seed,
        "config": asdict(cfg),
        "init": (json.loads((Path(cfg.init) / MANIFEST).read_text())
                 if cfg.init and (Path(cfg.init) / MANIFEST).is_file() else None),
        "model": {"architecture": cfg.model, "model_cfg": clip.model_cfg,
                  "parameters": int(sum(p.numel() for p in model.parameters())),
                  "weights": WEIGHTS_FILE_NAME, "sha256": sha, "load_with": f"ClipModel('local-dir:{out}')"},
        "vocabulary": {"objects": list(vocab.objects), "background": list(vocab.background),
                       "text_negatives": list(vocab.negatives),
                       "template": cfg.template},
        "objectives": {
            "crop": "class-level CLIP loss: image->text CE over all vocabulary prompts; text->image CE over the "
                    "batch's crops with a uniform target on same-class crops (same-class crops never negatives)",
            "dense": "MaskCLIP value-path dense features at dense_size, mask-pooled over GT instance masks "
                     "(pool_mask_features, Eq. 6 without perceptron), CE over vocabulary prompts",
            "selection": "best epoch by mean of held-out crop and dense accuracy on the val scenes"},
        "data": {"train": data_provenance(train_views, cfg.scenes), "val": data_provenance(val_views, cfg.val_scenes),
                 **({"test": data_provenance(test_views, cfg.test_scenes)} if test_views is not None else {})},
        "metrics": {"best_epoch": best_epoch, "epochs": epoch, "steps": step, **final,
                    "note": "accuracy = argmax over the object vocabulary (background excluded) of the "
                            "cosine to 'a {name} in the scene'; chance = 1/K; majority = most frequent class share"},
        "history": history,
        "timing": {"data_load_s": load_s, "train_s": train_total_s, "final_eval_s": final_s,
                   "total_s": time.perf_counter() - t_start, "torch_threads": torch.get_num_threads(),
                   "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "cpus": os.cpu_count()},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "open_clip": open_clip.__version__, "numpy": np.__version__, "device": str(clip.device)},
    }
    write_json_atomic(out / MANIFEST, manifest, default=str)
    return manifest


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m training.clip.train", description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(p, TrainConfig)
    try:
        return settings_from(TrainConfig, p.parse_args(argv))
    except ValueError as e:
        p.error(str(e))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    manifest = train(parse_args(argv), argv)
    print(json.dumps({k: manifest["metrics"][k] for k in manifest["metrics"] if k != "note"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
