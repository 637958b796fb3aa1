"""Model inputs of the synthetic-world CLIP's training and evaluation: normalised frame and crop batches,
crop sampling weights, and frames sampled with their instance masks and targets."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from folk_ros.core.clip_preprocess import images_to_float
from training.clip.dataset import ViewSet, frame_masks


def dense_input(colors: list[np.ndarray], size: tuple[int, int], mean, std, device) -> torch.Tensor:
    """(B, 3, H', W') normalised frames, resized as ``ClipModel.dense_features(size=...)`` does
    (antialiased bicubic, clamped to [0, 1], then the model's mean/std)."""
    xs = []
    for c in colors:
        x = images_to_float(c[None]).to(device)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        xs.append(x)
    x = torch.cat(xs)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - m) / s


def crop_input(crops: np.ndarray, mean, std, device) -> torch.Tensor:
    """(B, 3, S, S) normalised crops from (B, S, S, 3) uint8 (already at the model's size)."""
    x = images_to_float(crops).to(device)
    return (x - torch.tensor(mean, device=device).view(1, 3, 1, 1)) / torch.tensor(std, device=device).view(1, 3, 1, 1)


def crop_weights(views: ViewSet, power: float) -> np.ndarray:
    """(V,) sampling probabilities ~ (views of the crop's class) ** -power."""
    counts = views.class_counts()
    w = np.array([counts[n] for n in views.name], np.float64) ** -power
    return w / w.sum()


def sample_frames(views: ViewSet, frames: np.ndarray, rng: np.random.Generator, vocab: dict[str, int],
                  min_pixels: int, flip: bool) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode frames, optionally flip each at random, and cut their GT masks.

    Returns colours [(H, W, 3) uint8], masks (M, H, W) bool, image_index (M,), targets (M,).
    """
    colors, masks, index, targets = [], [], [], []
    for b, f in enumerate(frames):
        fr = views.frames[int(f)]
        color, inst = fr.decode()
        if flip and rng.random() < 0.5:
            color, inst = np.ascontiguousarray(color[:, ::-1]), np.ascontiguousarray(inst[:, ::-1])
        _, m, t = frame_masks(inst, views.labels[fr.scene], vocab, min_pixels)
        colors.append(color)
        masks.append(m)
        targets.append(t)
        index.append(np.full(len(t), b))
    return (colors, torch.from_numpy(np.concatenate(masks)), torch.from_numpy(np.concatenate(index)),
            torch.from_numpy(np.concatenate(targets)))
