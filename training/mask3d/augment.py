"""Training-time augmentation of a coloured point cloud (Mask3D-style, for indoor scans).

Each function is pure: it takes arrays and a ``numpy.random.Generator`` and returns new
arrays, so a seeded generator reproduces an epoch exactly. Instance labels are untouched:
every augmentation here moves or recolours points, never reorders or drops them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    rotate_z: bool = True                        # uniform rotation about the vertical axis
    scale: tuple[float, float] = (0.9, 1.1)      # isotropic scale range
    flip_prob: float = 0.5                       # probability of mirroring x and (independently) y
    jitter_sigma: float = 0.005                  # metres of Gaussian position noise
    brightness: float = 0.1                      # +- additive brightness on [0, 1] colours
    contrast: tuple[float, float] = (0.8, 1.2)   # colour contrast around the mean
    color_noise: float = 0.02                    # per-point Gaussian colour noise


def random_rotation_z(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) rotation about z by an angle drawn uniformly from [0, 2 pi)."""
    a = rng.uniform(0.0, 2.0 * np.pi)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def augment_geometry(xyz: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """Rotate about z around the cloud's centre, flip, scale and jitter; (N, 3) -> (N, 3) float32."""
    centre = xyz.mean(axis=0) if len(xyz) else np.zeros(3)
    out = xyz.astype(np.float64) - centre
    if cfg.rotate_z:
        out = out @ random_rotation_z(rng).T
    for axis in (0, 1):
        if rng.random() < cfg.flip_prob:
            out[:, axis] = -out[:, axis]
    out *= rng.uniform(*cfg.scale)
    if cfg.jitter_sigma > 0:
        out += rng.normal(0.0, cfg.jitter_sigma, size=out.shape)
    return (out + centre).astype(np.float32)


def augment_color(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """Brightness, contrast and per-point noise on colours in [0, 1]; (N, 3) -> (N, 3) float32 in [0, 1]."""
    out = rgb.astype(np.float64)
    mean = out.mean(axis=0, keepdims=True) if len(out) else 0.0
    out = (out - mean) * rng.uniform(*cfg.contrast) + mean
    out += rng.uniform(-cfg.brightness, cfg.brightness)
    if cfg.color_noise > 0:
        out += rng.normal(0.0, cfg.color_noise, size=out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
