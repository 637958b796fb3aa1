"""The decoder's attention masks: pooled features times the mask embedding agree with the official order
(voxel logits first, then average-pooled level by level); intermediate masks only where training needs them."""

from __future__ import annotations

import pytest
import torch

from folk_ros.core.mask3d import Mask3D
from folk_ros.core.mask3d.config import preset
from folk_ros.core.mask3d.decoder import QueryDecoder
from folk_ros.core.sparse import SparseAvgPool, SparseTensor
from test.test_sparse_conv import random_coords


def _official_attention(decoder, queries, mask_features, segments, point2segment, steps):
    """Mask3D's mask_module order: (V, Q) voxel logits, average-pooled ``steps`` times, sigmoid < 0.5."""
    embed = decoder.mask_embed_head(decoder.decoder_norm(queries))
    logits = []
    for b, sl in enumerate(mask_features.batch_slices()):
        if segments is None:
            logits.append(mask_features.F[sl] @ embed[b].T)
        else:
            logits.append((segments[b] @ embed[b].T)[point2segment[b]])
    attn = mask_features.replace(torch.cat(logits))
    for _ in range(steps):
        attn = SparseAvgPool()(attn)
    return attn.F


@pytest.mark.parametrize("use_segments", [False, True], ids=["voxels", "segments"])
def test_attention_masks_equal_the_official_order(use_segments):
    torch.manual_seed(0)
    decoder = QueryDecoder(preset("small")).eval()
    coords = random_coords(400, 12, batch=2, seed=1)
    feats = torch.randn(coords.shape[0], decoder.cfg.hidden_dim)
    mask_features = SparseTensor.from_coords(coords, feats)
    segments = point2segment = None
    if use_segments:
        point2segment, segments = [], []
        for sl in mask_features.batch_slices():
            ids = torch.randint(0, 30, (sl.stop - sl.start,))
            point2segment.append(ids)
            segments.append(torch.randn(30, decoder.cfg.hidden_dim))
    queries = torch.randn(2, decoder.cfg.num_queries, decoder.cfg.hidden_dim)
    pooled = decoder.attention_features(mask_features, segments, point2segment, {0, 1, 3})
    assert set(pooled) == {0, 1, 3}
    with torch.no_grad():
        for steps, features in pooled.items():
            _, masks, attn = decoder.mask_module(queries, mask_features, segments, point2segment, features,
                                                 masks=False)
            assert masks is None
            reference = _official_attention(decoder, queries, mask_features, segments, point2segment, steps)
            assert attn.F.shape == reference.shape and attn.stride == 2 ** steps
            decided = reference.abs() > 1e-4          # float rounding may only flip logits within 1e-4 of 0
            assert decided.float().mean() > 0.99
            assert torch.equal(attn.F[decided], (reference.sigmoid() < 0.5)[decided])


def test_intermediate_masks_only_for_training():
    torch.manual_seed(0)
    model = Mask3D(preset("small"))
    coords = random_coords(3000, 40, batch=1, seed=2)[:, 1:]
    raw_xyz = coords.float() * 0.04
    feats = torch.rand(coords.shape[0], 3)
    with torch.no_grad():
        evaluated = model.eval()(coords, feats, raw_xyz)
        trained = model.train()(coords, feats, raw_xyz)
    assert len(evaluated["aux_outputs"]) == len(trained["aux_outputs"]) == 8
    assert all(a["pred_masks"] is None for a in evaluated["aux_outputs"])
    assert all(a["pred_masks"][0].shape == (coords.shape[0], 40) for a in trained["aux_outputs"])
    assert evaluated["pred_masks"][0].shape == (coords.shape[0], 40)


@pytest.mark.parametrize("batch", [1, 2])
def test_cross_attention_equals_torch_multihead_attention(batch):
    """The split attention (keys and values once, then queries) is nn.MultiheadAttention's, also with
    per-head masks and queries blocked nowhere or everywhere but one voxel."""
    from folk_ros.core.mask3d.decoder import CrossAttentionLayer
    torch.manual_seed(0)
    layer = CrossAttentionLayer(32, 4).eval()
    tgt, query_pos = torch.randn(7, batch, 32), torch.randn(7, batch, 32)
    memory, pos = torch.randn(50, batch, 32), torch.randn(50, batch, 32)
    blocked = torch.rand(batch * 4, 7, 50) > 0.5
    blocked[:, 0] = False
    blocked[:, 1, 1:] = True
    masks = [blocked, blocked[0]] if batch == 1 else [blocked]
    with torch.no_grad():
        kv = layer.project_memory(memory, pos)
        for mask in masks:
            ours = layer(tgt, kv, memory_mask=mask, query_pos=query_pos)
            att = layer.multihead_attn(query=tgt + query_pos, key=memory + pos, value=memory, attn_mask=mask,
                                       need_weights=False)[0]
            torch.testing.assert_close(ours, layer.norm(tgt + att), rtol=1e-5, atol=1e-6)
