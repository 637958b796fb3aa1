"""Mask3D query decoder: queries at furthest-point-sampled voxels (:mod:`.fps`), Fourier positional encoding,
masked attention, heads.

Follows ``models/mask3d.py`` of JonasSchult/Mask3D (Schult et al., ICRA 2023):
non-parametric queries at furthest-point-sampled voxels, positional encoding
``[sin(2*pi*x'B) | cos(2*pi*x'B)]`` of min-max-normalised coordinates, and per
hierarchy level a masked cross-attention (queries attend only to voxels inside
their current mask) -> self-attention -> FFN, all post-norm.  Module names equal
the official ones so official checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..sparse import SparseAvgPool, SparseConv3d, SparseTensor
from .config import Mask3DConfig
from .fps import furthest_point_sample


# ---------------------------------------------------------- positional enc --

def fourier_encode(xyz: torch.Tensor, gauss_b: torch.Tensor, lo: torch.Tensor | None,
                   hi: torch.Tensor | None) -> torch.Tensor:
    """Fourier features ``[sin(p) | cos(p)]``, ``p = 2*pi * ((xyz - lo) / (hi - lo)) @ B``.

    xyz: (N, 3); gauss_b: (3, D/2); lo, hi: (3,) range (None: no normalisation).
    Returns (N, D).  Axes with ``hi == lo`` are divided by 1 instead of 0 (the
    official code would give NaN there).
    """
    x = xyz.float()
    if lo is not None:
        span = hi - lo
        x = (x - lo) / torch.where(span == 0, torch.ones_like(span), span)
    x = x * (2 * math.pi)
    proj = torch.mm(x, gauss_b)
    return torch.cat([proj.sin(), proj.cos()], dim=1)


class FourierPositionEncoding(nn.Module):
    """Holds ``gauss_B`` (3, d_pos/2) ~ N(0, scale^2) (checkpoint buffer ``pos_enc.gauss_B``)."""

    def __init__(self, d_pos: int = 128, gauss_scale: float = 1.0, normalize: bool = True):
        super().__init__()
        if d_pos % 2:
            raise ValueError(f"d_pos must be even, got {d_pos}")
        self.normalize = normalize
        self.register_buffer("gauss_B", torch.randn(3, d_pos // 2) * gauss_scale)

    def forward(self, xyz: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """(N, 3) coordinates, (3,) min / max -> (N, d_pos)."""
        if not self.normalize:
            lo = hi = None
        return fourier_encode(xyz, self.gauss_B, lo, hi)


class QueryProjection(nn.Module):
    """Conv1d(k=1)-ReLU-Conv1d(k=1)-ReLU (3DETR GenericMLP with use_conv; keys ``layers.0/2``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.ReLU(), nn.Conv1d(dim, dim, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, Q) -> (B, dim, Q)."""
        return self.layers(x)


# ------------------------------------------------------------ layers -------

class CrossAttentionLayer(nn.Module):
    """Queries attend to level features: q = tgt + query_pos, k = memory + pos, v = memory.

    The attention is ``nn.MultiheadAttention``'s (its parameters, its operations in its order), split in
    two: :meth:`project_memory` makes the keys and values of a level once, and :meth:`forward` attends to
    them, so the decoder's passes over the same level (shared decoder, evaluation) reuse them.
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def project_memory(self, memory: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys of ``memory + pos`` and values of ``memory`` (L, B, d): (B, heads, L, d / heads) each."""
        mha = self.multihead_attn
        _, w_k, w_v = mha.in_proj_weight.chunk(3)
        _, b_k, b_v = mha.in_proj_bias.chunk(3)
        length, batch, d = memory.shape
        heads = mha.num_heads
        k = F.linear(memory + pos, w_k, b_k).view(length, batch, heads, d // heads).permute(1, 2, 0, 3)
        v = F.linear(memory, w_v, b_v).view(length, batch, heads, d // heads).permute(1, 2, 0, 3)
        return k, v

    def forward(self, tgt, memory_kv, memory_mask=None, query_pos=None):
        """tgt (Q, B, d); memory_kv from :meth:`project_memory`; memory_mask (Q, L) or (B*heads, Q, L)
        bool (True = blocked)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        mha = self.multihead_attn
        w_q, b_q = mha.in_proj_weight.chunk(3)[0], mha.in_proj_bias.chunk(3)[0]
        queries, batch, d = x.shape
        heads = mha.num_heads
        q = F.linear(x + query_pos, w_q, b_q).view(queries, batch, heads, d // heads).permute(1, 2, 0, 3)
        k, v = memory_kv
        mask = None
        if memory_mask is not None:
            mask = torch.zeros(memory_mask.shape, dtype=q.dtype, device=q.device).masked_fill_(
                memory_mask, float("-inf"))
            mask = mask.view(batch, heads, queries, -1) if mask.dim() == 3 else mask
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=mha.dropout if self.training else 0.0)
        att = att.permute(2, 0, 1, 3).reshape(queries * batch, d)
        att = F.linear(att, mha.out_proj.weight, mha.out_proj.bias).view(queries, batch, d)
        tgt = tgt + self.dropout(att)
        return tgt if self.normalize_before else self.norm(tgt)


class SelfAttentionLayer(nn.Module):
    """Self-attention among queries: q = k = tgt + query_pos, v = tgt."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(self, tgt, query_pos):
        """tgt, query_pos: (Q, B, d) -> (Q, B, d)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = x + query_pos
        att = self.self_attn(q, q, value=x, need_weights=False)[0]
        tgt = tgt + self.dropout(att)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Linear-ReLU-Linear with residual and LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before

    def forward(self, tgt):
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.normalize_before else self.norm(tgt)


# ------------------------------------------------------------ decoder ------

def segment_mean(feats: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """Mean of (V, C) rows per segment id (V,) -> (S, C), S = max id + 1 (scatter_mean)."""
    n = int(segment.max()) + 1 if segment.numel() else 0
    out = torch.zeros((n, feats.shape[1]), dtype=feats.dtype, device=feats.device)
    out.index_add_(0, segment, feats)
    count = torch.bincount(segment, minlength=n).clamp_(min=1)
    return out / count.to(feats.dtype)[:, None]


class QueryDecoder(nn.Module):
    """Mask3D's decoder and heads (everything except the backbone), official key names.

    ``decode`` consumes the backbone's stride-1 output and its feature maps and
    returns the raw prediction dict (see :meth:`decode`).
    """

    def __init__(self, cfg: Mask3DConfig):
        super().__init__()
        self.cfg = cfg
        d, planes = cfg.hidden_dim, cfg.backbone.planes
        sizes = planes[-5:]
        self.mask_features_head = SparseConv3d(planes[7], d, kernel_size=1, bias=True)
        self.query_projection = QueryProjection(d)
        self.mask_embed_head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.class_embed_head = nn.Linear(d, cfg.num_classes)
        self.pos_enc = FourierPositionEncoding(d, cfg.gauss_scale, cfg.normalize_pos_enc)
        self.pooling = SparseAvgPool()
        num_shared = 1 if cfg.shared_decoder else cfg.num_decoders
        kw = dict(dropout=cfg.dropout, normalize_before=cfg.pre_norm)
        self.cross_attention = nn.ModuleList(
            nn.ModuleList(CrossAttentionLayer(d, cfg.num_heads, **kw) for _ in cfg.hlevels)
            for _ in range(num_shared))
        self.self_attention = nn.ModuleList(
            nn.ModuleList(SelfAttentionLayer(d, cfg.num_heads, **kw) for _ in cfg.hlevels)
            for _ in range(num_shared))
        self.ffn_attention = nn.ModuleList(
            nn.ModuleList(FFNLayer(d, cfg.dim_feedforward, **kw) for _ in cfg.hlevels)
            for _ in range(num_shared))
        self.lin_squeeze = nn.ModuleList(
            nn.ModuleList(nn.Linear(sizes[h], d) for h in cfg.hlevels) for _ in range(num_shared))
        self.decoder_norm = nn.LayerNorm(d)

    # -- pieces ---------------------------------------------------------------

    def level_positions(self, raw_xyz: SparseTensor, num_levels: int) -> list[SparseTensor]:
        """Hierarchically average-pooled raw xyz, coarsest first: strides 2**(L-1) .. 1."""
        coords = [raw_xyz]
        for _ in range(num_levels - 1):
            coords.append(self.pooling(coords[-1]))
        return coords[::-1]

    def level_encodings(self, xyz: SparseTensor) -> torch.Tensor:
        """(V_level, d) Fourier encodings, min/max per batch item over that level's xyz."""
        out = torch.empty((xyz.F.shape[0], self.cfg.hidden_dim), dtype=torch.float32, device=xyz.device)
        for sl in xyz.batch_slices():
            p = xyz.F[sl]
            if p.shape[0]:
                out[sl] = self.pos_enc(p, p.min(0).values, p.max(0).values)
        return out

    def mask_module(self, queries: torch.Tensor, mask_features: SparseTensor,
                    mask_segments: list[torch.Tensor] | None, point2segment: list[torch.Tensor] | None,
                    attn_features: SparseTensor | None = None, masks: bool = True):
        """Class logits (B, Q, C), per-item mask logits (``masks``; else None), and the blocked-attention mask.

        Masks per item are (V_b, Q) voxel logits, or (S_b, Q) segment logits when segments are used.
        The attention mask (``attn_features`` given; else None) is a SparseTensor on ``attn_features``'
        coordinates with (V_level, Q) bool features (True = blocked): ``sigmoid(logit) < 0.5`` of the
        voxel logits average-pooled level by level. Pooling is a mean, so it commutes with the dot product
        with the mask embedding: ``attn_features`` are the voxels' mask features (or their segments')
        pooled to the level once per cloud (:meth:`attention_features`), and only the level's V_level rows
        are multiplied per layer, not all V voxels as in the official code (the same logits up to float
        rounding).
        """
        q = self.decoder_norm(queries)
        mask_embed = self.mask_embed_head(q)
        outputs_class = self.class_embed_head(q)
        preds = None
        if masks:
            slices = mask_features.batch_slices()
            preds = [mask_segments[b] @ mask_embed[b].T if mask_segments is not None
                     else mask_features.F[sl] @ mask_embed[b].T for b, sl in enumerate(slices)]
        if attn_features is None:
            return outputs_class, preds, None
        embed = mask_embed.detach().float()
        logits = torch.cat([attn_features.F[sl] @ embed[b].T for b, sl in enumerate(attn_features.batch_slices())])
        return outputs_class, preds, attn_features.replace(logits.sigmoid() < 0.5)

    def attention_features(self, mask_features: SparseTensor, mask_segments: list[torch.Tensor] | None,
                           point2segment: list[torch.Tensor] | None, steps: set[int]) -> dict[int, SparseTensor]:
        """Per pooling step in ``steps``: the voxels' mask features (each voxel its segment's, with
        segments) average-pooled that many times, for :meth:`mask_module`'s attention masks."""
        feats = mask_features.F
        if mask_segments is not None:
            feats = torch.cat([mask_segments[b][point2segment[b]] for b in range(len(mask_segments))])
        pooled, out = mask_features.replace(feats.detach().float()), {}
        for step in range(max(steps) + 1):
            if step:
                pooled = self.pooling(pooled)
            if step in steps:
                out[step] = pooled
        return out

    def initial_queries(self, x_coords: torch.Tensor, raw_xyz: torch.Tensor, slices: list[slice]):
        """FPS on integer voxel coordinates per item -> (fps_idx list, sampled xyz (B, Q, 3), query_pos (B, d, Q))."""
        fps_idx, sampled, pos = [], [], []
        for sl in slices:
            idx = furthest_point_sample(x_coords[sl].float(), self.cfg.num_queries).to(raw_xyz.device)
            p = raw_xyz[sl]
            fps_idx.append(idx)
            sampled.append(p[idx])
            pos.append(self.pos_enc(p[idx], p.min(0).values, p.max(0).values).T)
        sampled_coords = torch.stack(sampled)
        query_pos = self.query_projection(torch.stack(pos))
        return fps_idx, sampled_coords, query_pos

    # -- the decoder ------------------------------------------------------------

    def decode(self, x: SparseTensor, pcd: SparseTensor, feature_maps: list[SparseTensor],
               raw_xyz: torch.Tensor, point2segment: list[torch.Tensor] | None = None,
               is_eval: bool = True) -> dict:
        """Run queries over the feature hierarchy.

        Args:
            x: backbone input (stride 1; its integer coordinates feed FPS).
            pcd: backbone output at stride 1, (V, planes[7]).
            feature_maps: the 5 backbone maps, coarsest (stride 16) first.
            raw_xyz: (V, 3) metres per stride-1 voxel (same rows as ``x``).
            point2segment: per batch item (V_b,) int64 segment ids (0..S_b-1), or None
                for per-voxel masks; used only when ``cfg.train_on_segments``.
            is_eval: attend to every voxel of a level (True) or to at most
                ``sample_sizes[hlevel]`` random ones (training).

        Returns dict: ``pred_logits`` (B, Q, C); ``pred_masks`` list of (V_b, Q) or
        (S_b, Q) logits; ``aux_outputs`` list (num_decoders * len(hlevels)) of
        dicts with the same keys, made before each layer (their ``pred_masks`` only
        for training, ``not is_eval``; None otherwise); ``sampled_coords``
        (B, Q, 3); ``fps_idx`` list of (Q,); ``query_pos`` (B, Q, d);
        ``mask_features`` (V, d); ``backbone_features`` (V, planes[7]);
        ``level_xyz`` / ``level_posenc`` per hlevel (rows in level order).
        """
        cfg = self.cfg
        use_segments = cfg.train_on_segments and point2segment is not None
        n_maps = len(feature_maps)
        coords = self.level_positions(pcd.replace(raw_xyz.float()), n_maps)
        pos_encs = {h: self.level_encodings(coords[h]) for h in cfg.hlevels}   # not the unused stride-1 level
        mask_features = self.mask_features_head(pcd)
        slices = x.batch_slices()
        mask_segments = None
        if use_segments:
            mask_segments = [segment_mean(mask_features.F[sl], point2segment[b]) for b, sl in enumerate(slices)]
        fps_idx, sampled_coords, query_pos = self.initial_queries(x.C[:, 1:], raw_xyz.float(), slices)
        queries = torch.zeros_like(query_pos).permute(0, 2, 1)        # (B, Q, d)
        query_pos_qbd = query_pos.permute(2, 0, 1)                     # (Q, B, d)
        p2s = point2segment if use_segments else None
        attn_features = self.attention_features(mask_features, mask_segments, p2s,
                                                {n_maps - h - 1 for h in cfg.hlevels})

        pred_class, pred_mask = [], []
        level_kv: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}   # (decoder, level) -> keys, values
        for dec in range(cfg.num_decoders):
            shared = 0 if cfg.shared_decoder else dec
            for i, hlevel in enumerate(cfg.hlevels):
                output_class, output_mask, attn = self.mask_module(
                    queries, mask_features, mask_segments, p2s, attn_features[n_maps - hlevel - 1],
                    masks=not is_eval)
                level = feature_maps[hlevel]
                src, attn_b, pos_b = self._gather_level(level, attn, pos_encs[hlevel], hlevel, is_eval)
                memory_kv = level_kv.get((shared, i))
                if memory_kv is None:
                    memory = self.lin_squeeze[shared][i](src.permute(1, 0, 2))
                    memory_kv = self.cross_attention[shared][i].project_memory(memory, pos_b.permute(1, 0, 2))
                    if is_eval:   # every voxel, no sampling: the same keys and values on every pass
                        level_kv[(shared, i)] = memory_kv
                if attn_b.shape[0] == 1:      # one (Q, L) mask broadcast over heads: same result, 1/heads memory
                    memory_mask = attn_b[0].T
                else:
                    memory_mask = attn_b.repeat_interleave(cfg.num_heads, dim=0).permute(0, 2, 1)
                out = self.cross_attention[shared][i](queries.permute(1, 0, 2), memory_kv,
                                                      memory_mask=memory_mask, query_pos=query_pos_qbd)
                out = self.self_attention[shared][i](out, query_pos=query_pos_qbd)
                queries = self.ffn_attention[shared][i](out).permute(1, 0, 2)
                pred_class.append(output_class)
                pred_mask.append(output_mask)
        output_class, output_mask, _ = self.mask_module(queries, mask_features, mask_segments, p2s)
        return {
            "pred_logits": output_class,
            "pred_masks": output_mask,
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(pred_class, pred_mask)],
            "sampled_coords": sampled_coords,
            "fps_idx": fps_idx,
            "query_pos": query_pos.permute(0, 2, 1),
            "mask_features": mask_features.F,
            "backbone_features": pcd.F,
            "level_xyz": [coords[h] for h in cfg.hlevels],
            "level_posenc": [pos_encs[h] for h in cfg.hlevels],
        }

    def _gather_level(self, level: SparseTensor, attn: SparseTensor, pos_enc: torch.Tensor,
                      hlevel: int, is_eval: bool):
        """Pad/sample one level per batch item: features (B, L, C), blocked (B, L, Q), posenc (B, L, d)."""
        slices = level.batch_slices()
        sizes = [sl.stop - sl.start for sl in slices]
        if min(sizes) <= 1:
            raise RuntimeError("a batch item has a single voxel at a decoder level (NaN in cross-attention)")
        curr = max(sizes)
        if not is_eval:
            curr = min(curr, self.cfg.sample_sizes[hlevel])
        dev = level.device
        rows, pad = [], []
        for sl, n in zip(slices, sizes):
            if n <= curr:
                idx = torch.zeros(curr, dtype=torch.long, device=dev)
                idx[:n] = torch.arange(n, device=dev)
                m = torch.ones(curr, dtype=torch.bool, device=dev)
                m[:n] = False
            else:
                idx = torch.randperm(n, device=dev)[:curr]
                m = torch.zeros(curr, dtype=torch.bool, device=dev)
            rows.append(idx + sl.start)
            pad.append(m)
        rows_t, pad_t = torch.stack(rows), torch.stack(pad)           # (B, L)
        feats = level.F[rows_t]
        blocked = attn.F[rows_t]                                       # (B, L, Q)
        full = blocked.sum(1) == curr                                  # (B, Q): query blocked everywhere
        blocked = blocked & ~full[:, None, :]
        blocked = blocked | pad_t[..., None]
        return feats, blocked, pos_enc[rows_t]
