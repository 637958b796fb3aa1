"""Mask pooling, Eq. 6 (training/teacher/mask_pooling.py)."""

import pytest
import torch

from training.teacher.mask_pooling import MaskPoolingHead, mask_cell_weights, mask_embeddings, pool_mask_features

# D = 2 channels on a 2 x 2 grid; the image is 4 x 4, so each cell is 2 x 2 pixels
FEATURES = torch.tensor([[[1.0, 2.0], [3.0, 4.0]],
                         [[10.0, 0.0], [0.0, -10.0]]])


def _masks():
    a = torch.zeros(4, 4, dtype=torch.bool)
    a[0:2, :] = True  # top-left and top-right cells fully
    a[2, 0] = True  # a quarter of bottom-left: below 0.5, not counted
    b = torch.zeros(4, 4, dtype=torch.bool)
    b[3, 3] = True  # a quarter of bottom-right only: falls back to that cell
    c = torch.zeros(4, 4, dtype=torch.bool)
    c[2, 0] = c[2, 1] = c[3, 0] = True  # 3/4 of bottom-left
    c[2, 2] = c[2, 3] = True  # 2/4 of bottom-right: exactly the threshold, counted
    return torch.stack([a, b, c])


def test_cell_weights():
    w = mask_cell_weights(_masks(), (2, 2), min_coverage=0.5)
    assert w.tolist() == [[[1, 1], [0, 0]], [[0, 0], [0, 1]], [[0, 0], [1, 1]]]


def test_pooled_values_by_hand():
    pooled = pool_mask_features(FEATURES, _masks(), min_coverage=0.5)
    # a: mean of cells (0,0), (0,1); b: cell (1,1); c: cells (1,0), (1,1)
    expected = torch.tensor([[1.5, 5.0], [4.0, -10.0], [3.5, -5.0]])
    torch.testing.assert_close(pooled, expected)


def test_identity_head_preserves_then_normalises():
    head = MaskPoolingHead(2)
    pooled = pool_mask_features(FEATURES, _masks())
    torch.testing.assert_close(head.project(pooled), pooled)
    emb = mask_embeddings(FEATURES, _masks(), head)
    torch.testing.assert_close(emb, pooled / pooled.norm(dim=1, keepdim=True))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert head.proj.weight.requires_grad  # trainable (MaskCLIP++)


def test_batch_of_images_uses_each_masks_image():
    feats = torch.stack([FEATURES, 2 * FEATURES, -FEATURES])  # (B=3, D, h, w)
    masks = _masks()
    pooled = pool_mask_features(feats, masks, image_index=torch.tensor([1, 0, 2]))
    single = pool_mask_features(FEATURES, masks)
    torch.testing.assert_close(pooled, single * torch.tensor([[2.0], [1.0], [-1.0]]))
    with pytest.raises(ValueError, match="image_index"):
        pool_mask_features(feats, masks)


def test_uneven_grid_full_mask_is_global_mean():
    feats = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2, 3, 5)
    full = torch.ones(1, 31, 47, dtype=torch.bool)
    torch.testing.assert_close(pool_mask_features(feats, full), feats.mean(dim=(1, 2))[None])


def test_empty_mask_is_an_error():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True
    with pytest.raises(ValueError, match=r"\[1\] are empty"):
        pool_mask_features(FEATURES, masks)
