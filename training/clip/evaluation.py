"""Held-out zero-shot accuracy of the synthetic-world CLIP: object crops against the prompts, and mask-pooled
dense features (what the teacher uses); the model-selection score."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from folk_ros.core.clip import ClipModel
from training.clip.batches import sample_frames
from training.clip.dataset import ViewSet
from training.teacher.mask_pooling import pool_mask_features


@dataclass(frozen=True)
class EvalSet:
    """A fixed held-out subset: object views and frames of a ViewSet."""

    views: ViewSet
    view_index: np.ndarray   # (V',) views evaluated (classes outside the vocabulary removed)
    frame_index: np.ndarray  # (F',) frames for the dense accuracy
    skipped_views: int       # views whose class is not in the object vocabulary


def make_eval_set(views: ViewSet, objects: tuple[str, ...], max_views: int, max_frames: int,
                  seed: int = 0) -> EvalSet:
    """Views of known object classes (a seeded subset of at most `max_views`) and evenly spaced frames."""
    known = np.isin(views.name, list(objects))
    idx = np.flatnonzero(known)
    if max_views and len(idx) > max_views:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_views, replace=False))
    frames = np.unique(views.frame[known])
    if max_frames and len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    return EvalSet(views, idx, frames, int((~known).sum()))


def _accuracies(pred: np.ndarray, truth: np.ndarray, k: int) -> dict[str, float]:
    """Micro and class-mean accuracy, chance (1/K) and the majority-class rate."""
    if len(truth) == 0:
        return {"acc": float("nan"), "mean_class_acc": float("nan"), "n": 0}
    classes = np.unique(truth)
    per_class = [float((pred[truth == c] == c).mean()) for c in classes]
    return {"acc": float((pred == truth).mean()), "mean_class_acc": float(np.mean(per_class)), "n": int(len(truth)),
            "classes": int(len(classes)), "chance": 1.0 / k,
            "majority": float(np.bincount(truth).max() / len(truth))}


def evaluate(clip: ClipModel, text: torch.Tensor, objects: tuple[str, ...], data: EvalSet,
             dense_size: tuple[int, int], min_pixels: int, batch: int = 64) -> dict[str, dict]:
    """Zero-shot accuracy of held-out object crops and of mask-pooled dense features.

    Args:
        clip: the model, evaluated through its public ``encode_images`` / ``dense_features``.
        text: (K_o, D) L2-normalised prompt embeddings of the object vocabulary `objects`.
        data: the held-out views and frames.

    Returns:
        {"crop": {...}, "dense": {...}}, each with acc, mean_class_acc, n, classes, chance, majority.
    """
    clip.model.eval()
    classes = {n: i for i, n in enumerate(objects)}
    k = len(objects)
    text = text.to(clip.device)
    views = data.views
    crop_pred = []
    for chunk in np.array_split(data.view_index, max(1, math.ceil(len(data.view_index) / batch))):
        if len(chunk):
            emb = clip.encode_images(views.crops(chunk))                          # (b, D)
            crop_pred.append((emb @ text.T).argmax(1).cpu().numpy())
    crop_truth = np.array([classes[n] for n in views.name[data.view_index]], np.int64)
    crop_pred = np.concatenate(crop_pred) if crop_pred else np.zeros(0, np.int64)

    dense_pred, dense_truth = [], []
    for chunk in np.array_split(data.frame_index, max(1, math.ceil(len(data.frame_index) / 8))):
        if not len(chunk):
            continue
        colors, masks, index, targets = sample_frames(views, chunk, np.random.default_rng(0), classes,
                                                      min_pixels, flip=False)
        if not len(targets):
            continue
        feats = clip.dense_features(np.stack(colors), size=dense_size)           # (b, D, h, w)
        pooled = F.normalize(pool_mask_features(feats, masks, index), dim=-1)    # (m, D)
        dense_pred.append((pooled @ text.T).argmax(1).cpu().numpy())
        dense_truth.append(targets.numpy())
    dense_pred = np.concatenate(dense_pred) if dense_pred else np.zeros(0, np.int64)
    dense_truth = np.concatenate(dense_truth) if dense_truth else np.zeros(0, np.int64)
    crop = {**_accuracies(crop_pred, crop_truth, k), "skipped_unknown_class": data.skipped_views}
    return {"crop": crop, "dense": _accuracies(dense_pred, dense_truth, k)}


def selection_score(metrics: dict[str, dict]) -> float:
    """Model selection: mean of the crop and dense held-out accuracies."""
    return 0.5 * (metrics["crop"]["acc"] + metrics["dense"]["acc"])
