"""Mask pooling of CLIP dense features (paper section 3.1, Eq. 6; MaskCLIP++ style).

The dense 2D mask of an instance is downsampled to the feature grid as the covered area
fraction of each cell; cells covered at least ``min_coverage`` count (a mask too small
to cover any cell that much falls back to its most covered cell, so no mask pools
nothing). The features of the counted cells are averaged, projected by a one-layer
perceptron into CLIP space (identity-initialised, trainable as in MaskCLIP++) and
L2-normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CHUNK = 64  # masks downsampled at once (bounds the (chunk, H, W) float buffer)


def mask_cell_weights(masks: torch.Tensor, grid: tuple[int, int], min_coverage: float = 0.5) -> torch.Tensor:
    """(K, h, w) float 0/1 cell selection of K dense masks on an (h, w) feature grid.

    Args:
        masks: (K, H, W) bool dense masks at image resolution.
        grid: (h, w) feature-map size.
        min_coverage: fraction of a cell that must lie in the mask for the cell to count.

    Raises:
        ValueError: for an empty mask (nothing to pool) or bad shapes.
    """
    if masks.ndim != 3 or masks.dtype != torch.bool:
        raise ValueError(f"masks must be (K, H, W) bool, got {tuple(masks.shape)} {masks.dtype}")
    if not 0.0 < min_coverage <= 1.0:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    empty = torch.nonzero(~masks.flatten(1).any(dim=1)).flatten()
    if len(empty):
        raise ValueError(f"masks {empty.tolist()[:10]} are empty: nothing to pool")
    out = []
    for chunk in masks.split(_CHUNK):
        # area fraction of each cell (uneven bins when H, W are not multiples of h, w)
        cover = F.adaptive_avg_pool2d(chunk[:, None].float(), grid)[:, 0]  # (k, h, w)
        sel = cover >= min_coverage - 1e-6
        flat = cover.flatten(1)
        best = F.one_hot(flat.argmax(dim=1), flat.shape[1]).bool().view_as(sel)
        none = ~sel.flatten(1).any(dim=1)
        sel[none] = best[none]
        out.append(sel.float())
    return torch.cat(out)


def pool_mask_features(features: torch.Tensor, masks: torch.Tensor, image_index: torch.Tensor | None = None,
                       min_coverage: float = 0.5) -> torch.Tensor:
    """(K, D) masked mean of dense features, Eq. 6 before the perceptron.

    Args:
        features: (D, h, w) dense feature map of one image, or (B, D, h, w) of B images.
        masks: (K, H, W) bool dense masks at image resolution (any H, W).
        image_index: (K,) int64 image of each mask in the batch; may be omitted when B == 1.
        min_coverage: see :func:`mask_cell_weights`.
    """
    if features.ndim == 3:
        features = features[None]
    if features.ndim != 4:
        raise ValueError(f"features must be (D, h, w) or (B, D, h, w), got {tuple(features.shape)}")
    b = features.shape[0]
    if image_index is None:
        if b != 1:
            raise ValueError(f"image_index is needed for a batch of {b} feature maps")
        image_index = torch.zeros(masks.shape[0], dtype=torch.long)
    image_index = torch.as_tensor(image_index, dtype=torch.long, device=features.device)
    if image_index.shape != (masks.shape[0],):
        raise ValueError(f"image_index must be ({masks.shape[0]},), got {tuple(image_index.shape)}")
    if len(image_index) and (image_index.min() < 0 or image_index.max() >= b):
        raise ValueError(f"image_index must lie in [0, {b})")
    weights = mask_cell_weights(masks.to(features.device), tuple(features.shape[-2:]), min_coverage)
    weights = weights.to(features.dtype)  # (K, h, w)
    summed = features.new_zeros((masks.shape[0], features.shape[1]))
    for i in torch.unique(image_index).tolist():  # one matmul per image, not a (K, D, h, w) gather
        rows = torch.nonzero(image_index == i).flatten()
        summed[rows] = weights[rows].flatten(1) @ features[i].flatten(1).T  # (k, hw) @ (hw, D)
    return summed / weights.flatten(1).sum(dim=1, keepdim=True)


class MaskPoolingHead(nn.Module):
    """The one-layer perceptron of Eq. 6: ``normalize(W f + b)``, identity-initialised.

    With W = I and b = 0 it starts as plain mask pooling (MaskCLIP) and can be trained
    (MaskCLIP++).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.proj = nn.Linear(dim, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim))
            self.proj.bias.zero_()

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """(K, D) -> (K, D) perceptron output before normalisation."""
        return self.proj(pooled)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(K, D) pooled features -> (K, D) L2-normalised CLIP-space embeddings."""
        return F.normalize(self.project(pooled), dim=-1)


def mask_embeddings(features: torch.Tensor, masks: torch.Tensor, head: MaskPoolingHead,
                    image_index: torch.Tensor | None = None, min_coverage: float = 0.5) -> torch.Tensor:
    """(K, D) L2-normalised 2D CLIP embeddings of K masks (Eq. 6 end to end)."""
    return head(pool_mask_features(features, masks, image_index, min_coverage))
