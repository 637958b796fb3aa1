"""Multi-view selection (paper section 3.1, Eq. 1).

Per instance: pre-select the top-k_pre frames by visible pixels (descending, ties by frame
order), then walk them in that order and keep a frame only when its camera rotation differs
from every already kept frame by at least the angle threshold; the geodesic angle between
rotations R_i and R_j is ``arccos((tr(R_i^T R_j) - 1) / 2)`` (Huynh 2009).
"""

from __future__ import annotations

import numpy as np


def rotation_angle(r_a: np.ndarray, r_b: np.ndarray) -> np.ndarray:
    """Geodesic angle in degrees between rotations (Eq. 1), broadcast over leading axes.

    Args:
        r_a, r_b: (..., 3, 3) rotation matrices (a 4x4 pose's ``[:3, :3]``).

    Returns:
        (...) float64 degrees in [0, 180]; the cosine is clipped to [-1, 1] against rounding.
    """
    r_a = np.asarray(r_a, dtype=np.float64)
    r_b = np.asarray(r_b, dtype=np.float64)
    if r_a.shape[-2:] != (3, 3) or r_b.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must be (..., 3, 3), got {r_a.shape} and {r_b.shape}")
    # tr(A^T B) = sum_ij A_ij B_ij
    trace = np.sum(r_a * r_b, axis=(-2, -1))
    return np.degrees(np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0)))


def _check_inputs(counts: np.ndarray, poses: np.ndarray, k_pre: int, angle_threshold_deg: float) -> None:
    if poses.ndim != 3 or poses.shape[1:] not in ((4, 4), (3, 3)):
        raise ValueError(f"poses must be (F, 4, 4) (or (F, 3, 3) rotations), got {poses.shape}")
    if counts.shape[-1] != poses.shape[0]:
        raise ValueError(f"counts have {counts.shape[-1]} frames but poses {poses.shape[0]}")
    if k_pre < 1:
        raise ValueError(f"k_pre must be >= 1, got {k_pre}")
    if not 0.0 <= angle_threshold_deg <= 180.0:
        raise ValueError(f"angle_threshold_deg must be in [0, 180], got {angle_threshold_deg}")


def select_views_batch(counts: np.ndarray, poses: np.ndarray, k_pre: int = 6, angle_threshold_deg: float = 5.0,
                       min_pixels: int = 1) -> list[list[int]]:
    """Eq. 1 for M instances at once.

    Args:
        counts: (M, F) visible pixels of each instance in each frame.
        poses: (F, 4, 4) camera-to-world poses (or (F, 3, 3) rotations).
        k_pre: pre-selected frames per instance (paper's k_pre).
        angle_threshold_deg: a frame closer than this (degrees) to a kept frame is dropped.
        min_pixels: frames with fewer visible pixels are never candidates.

    Returns:
        per instance, the kept frame positions (indices into the F axis) in descending-count
        order; empty for an instance seen in no frame.
    """
    counts = np.asarray(counts)
    poses = np.asarray(poses, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts must be (M, F), got {counts.shape}")
    _check_inputs(counts, poses, k_pre, angle_threshold_deg)
    m, f = counts.shape
    k = min(k_pre, f)
    # stable sort of -counts: descending counts, ties by frame order
    cand = np.argsort(-counts, axis=1, kind="stable")[:, :k]  # (M, k)
    valid = np.take_along_axis(counts, cand, axis=1) >= max(min_pixels, 1)  # (M, k)
    rot = poses[:, :3, :3][cand]  # (M, k, 3, 3)
    angle = rotation_angle(rot[:, :, None], rot[:, None, :])  # (M, k, k)
    keep = np.zeros((m, k), dtype=bool)
    for j in range(k):  # greedy walk over the k_pre ranks, vectorised over instances
        similar = np.any(keep[:, :j] & (angle[:, j, :j] < angle_threshold_deg), axis=1)
        keep[:, j] = valid[:, j] & ~similar
    return [cand[i, keep[i]].tolist() for i in range(m)]


def select_views(counts: np.ndarray, poses: np.ndarray, k_pre: int = 6, angle_threshold_deg: float = 5.0,
                 min_pixels: int = 1) -> list[int]:
    """Eq. 1 for one instance: ``counts`` (F,) visible pixels per frame, ``poses`` (F, 4, 4).

    Returns the kept frame positions in descending-count order (see :func:`select_views_batch`).
    """
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError(f"counts must be (F,), got {counts.shape}")
    return select_views_batch(counts[None], poses, k_pre, angle_threshold_deg, min_pixels)[0]
