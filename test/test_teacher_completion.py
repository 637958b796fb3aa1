"""Density-guided mask completion, Eq. 2-5 (training/teacher/mask_completion.py)."""

import dataclasses

import cv2
import numpy as np
import pytest

from training.teacher.config import TeacherConfig
from training.teacher.mask_completion import (
    DIRECTIONS,
    complete_mask,
    complete_masks,
    density,
    dilate_mask,
    direction_increments,
    expansion_directions,
)


def _iou(a, b):
    return float((a & b).sum() / (a | b).sum())


def _dense_shape(h=480, w=640):
    """(H, W) bool: an ellipse and a rectangle, overlapping."""
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (250, 240), (140, 90), 20, 0, 360, 1, -1)
    cv2.rectangle(m, (330, 150), (520, 380), 1, -1)
    return m.astype(bool)


def _sparsify(dense, seed=0, spacing=3, keep=0.7):
    """Pixels of 'projected mesh vertices': a jittered lattice, ~30 % of it dropped, a gap band."""
    rng = np.random.default_rng(seed)
    h, w = dense.shape
    yy, xx = np.mgrid[0:h:spacing, 0:w:spacing]
    yy = np.clip(yy + rng.integers(-1, 2, yy.shape), 0, h - 1)
    xx = np.clip(xx + rng.integers(-1, 2, xx.shape), 0, w - 1)
    kept = rng.random(yy.shape) < keep
    sparse = np.zeros_like(dense)
    sparse[yy[kept], xx[kept]] = True
    sparse &= dense
    sparse[:, 300:306] = False  # a band with no vertices (a seam of the mesh)
    return sparse


def _reference_expand(mask, cfg):
    """Per-pixel loop version of one expansion round (Eq. 3-5), for checking the vectorised one."""
    dens = density(mask, cfg.gaussian_kernel_size, cfg.gaussian_sigma)
    h, w = mask.shape
    r = cfg.expansion_radius
    out = mask.copy()

    def at(y, x):
        return dens[y, x] if 0 <= y < h and 0 <= x < w else 0.0

    for y, x in zip(*np.nonzero(mask & (dens >= cfg.density_threshold))):
        inc = [at(y + r * dy, x + r * dx) - dens[y, x] for dy, dx in DIRECTIONS[cfg.num_directions]]
        order = sorted(range(len(inc)), key=lambda i: -inc[i])  # stable: ties keep direction order
        for i in order[:cfg.top_k_directions]:
            if inc[i] > 1e-6:
                dy, dx = DIRECTIONS[cfg.num_directions][i]
                cy, cx = y + r * dy, x + r * dx
                out[max(cy - r, 0):max(cy + r + 1, 0), max(cx - r, 0):max(cx + r + 1, 0)] = True
    return out


def test_vectorised_matches_per_pixel_reference():
    rng = np.random.default_rng(3)
    sparse = np.zeros((40, 50), bool)
    sparse[5:35, 8:40] = rng.random((30, 32)) < 0.12
    sparse[0, 0] = sparse[39, 49] = True  # image corners: windows clipped at the border
    cfg = TeacherConfig(dilation_radius=1, gaussian_kernel_size=7, density_threshold=0.4, top_k_directions=3,
                        expansion_radius=2, completion_iterations=2)
    ref = dilate_mask(sparse, cfg.dilation_radius)
    for _ in range(cfg.completion_iterations):
        ref = _reference_expand(ref, cfg)
    np.testing.assert_array_equal(complete_mask(sparse, cfg), ref)


def test_increments_and_top_k_on_a_ramp():
    dens = np.tile(np.arange(5, dtype=np.float32), (5, 1))  # density grows to the east (+x)
    inc = direction_increments(dens, 1, 8)
    names = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"]
    centre = dict(zip(names, inc[:, 2, 2]))
    assert centre["E"] == centre["NE"] == centre["SE"] == 1 and centre["N"] == 0 and centre["W"] == -1
    seeds = np.zeros((5, 5), bool)
    seeds[2, 2] = True
    chosen = expansion_directions(inc, seeds, top_k=2)
    # three directions tie at +1: the first two in direction order win (NE, E)
    assert [n for n, c in zip(names, chosen[:, 2, 2]) if c] == ["NE", "E"]
    assert chosen.sum() == 2
    # only positive increments: top-8 still expands toward the three rising directions only
    assert expansion_directions(inc, seeds, top_k=8)[:, 2, 2].sum() == 3


def test_completion_beats_sparse_and_plain_dilation():
    dense = _dense_shape()
    sparse = _sparsify(dense)
    cfg = TeacherConfig()
    completed = complete_mask(sparse, cfg)
    dilated = dilate_mask(sparse, cfg.dilation_radius)
    iou_sparse, iou_dilated, iou_ours = _iou(sparse, dense), _iou(dilated, dense), _iou(completed, dense)
    print(f"IoU sparse {iou_sparse:.3f} dilation {iou_dilated:.3f} ours {iou_ours:.3f}")
    assert 0.05 < sparse.sum() / dense.sum() < 0.15  # the sparsity of projected vertices
    assert iou_ours > iou_dilated + 0.01 > iou_sparse
    assert (completed >= dilated).all()  # Eq. 2's mask is kept
    # growth follows density into the shape: most added pixels lie inside it
    added = completed & ~dilated
    assert (added & dense).sum() > 2 * (added & ~dense).sum()


def test_edge_cases():
    cfg = TeacherConfig()
    empty = np.zeros((30, 40), bool)
    assert not complete_mask(empty, cfg).any()
    lone = empty.copy()
    lone[15, 20] = True
    out = complete_mask(lone, cfg)
    assert out[15, 20] and out.sum() <= (2 * cfg.dilation_radius + 1 + 4 * cfg.expansion_radius
                                         * cfg.completion_iterations) ** 2
    assert complete_masks(np.stack([empty, lone]), cfg).shape == (2, 30, 40)
    no_rounds = dataclasses.replace(cfg, completion_iterations=0)
    np.testing.assert_array_equal(complete_mask(lone, no_rounds), dilate_mask(lone, cfg.dilation_radius))


def test_bad_inputs():
    with pytest.raises(ValueError, match="bool"):
        complete_mask(np.zeros((4, 4), np.uint8), TeacherConfig())
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        dilate_mask(np.zeros((2, 4, 4), bool), 1)
    with pytest.raises(ValueError, match="odd"):
        density(np.zeros((4, 4), bool), 4)
    with pytest.raises(ValueError, match="top_k_directions"):
        TeacherConfig(top_k_directions=9)
