"""Mask3D post-processing (trainer.eval_instance_step) and FOLK's class-agnostic proposals.

Official path (ScanNet200 evaluation): softmax over classes without no-object,
optional DBSCAN split of every query mask, top-k over candidates x classes,
``mask = logit > 0``, ``score = class prob * mean(sigmoid(logit) inside the mask)``,
full-resolution masks by a segment majority vote.  Class-agnostic path (FOLK):
one proposal per query (or per DBSCAN part) with
``score = objectness * mean(sigmoid inside the mask)``, objectness = 1 - p(no-object),
then greedy mask NMS at IoU 0.9 (the mask threshold, split distance and NMS IoU are settings).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import csr_matrix

from folk_ros.core.voxel_masks import VoxelMasks

from .config import PostprocessConfig
from .dbscan import dbscan_split, mask_parts
from .parts import MaskParts


# ---------------------------------------------------------- scoring ---------

def mask_scores(mask_logits: torch.Tensor, logit_threshold: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, K) logits -> (binary ``logit > logit_threshold`` (V, K) bool, mean sigmoid inside each mask (K,))."""
    binary = mask_logits > logit_threshold
    heat = mask_logits.float().sigmoid()
    fb = binary.float()
    return binary, (heat * fb).sum(0) / (fb.sum(0) + 1e-6)


def get_mask_and_scores(class_probs: torch.Tensor, mask_logits: torch.Tensor, topk: int):
    """Mask3D's top-k over candidates x classes.

    class_probs (K, C) (no no-object column); mask_logits (V, K).
    Returns scores (T,), binary masks (V, T) bool, classes (T,) int64, heatmaps (V, T),
    with ``T = min(topk, K*C)`` sorted by class probability (as torch.topk).
    """
    num_classes = class_probs.shape[1]
    probs, idx = class_probs.flatten().topk(min(topk, class_probs.numel()), sorted=True)
    classes = idx % num_classes
    cand = torch.div(idx, num_classes, rounding_mode="floor")
    logits = mask_logits[:, cand]
    binary, mscore = mask_scores(logits)
    return probs * mscore, binary, classes, logits.float().sigmoid()


def full_resolution_masks(voxel_masks: torch.Tensor, inverse_map: torch.Tensor,
                          point2segment_full: torch.Tensor | None = None) -> torch.Tensor:
    """(V, K) bool voxel masks -> (N, K) bool point masks; with segments a majority vote
    (mean over the segment's points > 0.5), as get_full_res_mask with eval_on_segments."""
    m = voxel_masks[inverse_map].float()
    if point2segment_full is None:
        return m > 0
    seg = point2segment_full.to(m.device)
    n_seg = int(seg.max()) + 1
    acc = torch.zeros((n_seg, m.shape[1]), dtype=m.dtype, device=m.device).index_add_(0, seg, m)
    cnt = torch.bincount(seg, minlength=n_seg).clamp_(min=1).to(m.dtype)
    return (acc / cnt[:, None] > 0.5)[seg]


def remap_scannet200_classes(classes: torch.Tensor, valid_ids, label_offset: int = 2) -> torch.Tensor:
    """Model class c (0..199) -> ScanNet200 id as Mask3D does: c == 0 -> -1, + label_offset,
    then index i -> valid_ids[i] (values outside the table stay raw)."""
    c = classes.clone()
    c[c == 0] = -1
    c = c + label_offset
    table = torch.as_tensor(list(valid_ids), dtype=torch.int64)
    inside = (c >= 0) & (c < table.numel())
    out = c.clone()
    out[inside] = table[c[inside]]
    return out


def scannet200_instances(pred_logits: torch.Tensor, mask_logits: torch.Tensor, voxel_xyz: torch.Tensor,
                         inverse_map: torch.Tensor, point2segment_full: torch.Tensor | None,
                         cfg: PostprocessConfig = PostprocessConfig()) -> dict:
    """Mask3D's ``eval_instance_step`` for one scene.

    pred_logits (Q, C+1) final class logits; mask_logits (V, Q) voxel mask logits
    (segment logits already broadcast to voxels); voxel_xyz (V, 3) metres;
    inverse_map (N,) point -> voxel; point2segment_full (N,) or None.
    Returns dict masks (N, T) bool, scores (T,), classes (T,) model class ids
    (0..C-1; map with :func:`remap_scannet200_classes`), sorted by score descending.
    """
    probs = pred_logits.float().softmax(-1)[:, :-1]
    if cfg.use_dbscan:
        mask_logits, src = dbscan_split(mask_logits, voxel_xyz, cfg.dbscan_eps, cfg.dbscan_min_points)
        probs = probs[src.to(probs.device)]
    scores, binary, classes, _ = get_mask_and_scores(probs, mask_logits, cfg.topk_per_image)
    masks = full_resolution_masks(binary, inverse_map, point2segment_full)
    order = torch.sort(scores, descending=True, stable=True).indices
    return {"masks": masks[:, order], "scores": scores[order], "classes": classes[order]}


# ------------------------------------------------------ class-agnostic ------

def mask_nms(voxel: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy mask NMS over sparse masks, given as their (voxel, mask) entries.

    voxel, mask: (E,) int64, one entry per voxel of each of the K = ``len(scores)`` masks; weights: (V,)
    points per voxel (IoU over points), None = 1. A "voxel" may stand for a set of voxels in the same masks
    (:class:`MaskParts`' atoms), its weight their points. Returns the kept mask indices (int64) by descending
    score (ties: lower index first); a mask is dropped when its IoU with a kept higher-scoring mask
    exceeds ``iou_threshold``. Intersections are one sparse product; the greedy pass reads one sparse
    row per kept mask, so no (V, K) or (K, K) dense array is made.
    """
    k = int(scores.numel())
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k, device=order.device)
    r = rank[mask].cpu().numpy()                          # rows in score order
    v = voxel.cpu().numpy()
    n_vox = int(v.max()) + 1 if v.size else 0
    w = np.ones(n_vox) if weights is None else weights.double()[:n_vox].cpu().numpy()
    inter = mask_intersections(r, v, w, k)
    area = inter.diagonal()
    suppressed = np.zeros(k, dtype=bool)
    keep = []
    for i in range(k):
        if suppressed[i]:
            continue
        keep.append(i)
        cols = inter.indices[inter.indptr[i]:inter.indptr[i + 1]]
        both = inter.data[inter.indptr[i]:inter.indptr[i + 1]]
        suppressed[cols[both / np.maximum(area[i] + area[cols] - both, 1e-9) > iou_threshold]] = True
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


MASK_SET_TABLE = 1 << 24
"""Most (voxel mask set, mask) cells :func:`mask_intersections` tabulates (16 MB of bools); above, it multiplies
over the voxels."""


def _mask_keys(k: int) -> np.ndarray:
    """(K,) random int64 keys of the masks, the same on every call; any sum of K of them stays below 2**62."""
    return np.random.default_rng(0).integers(0, 2 ** 62 // max(k, 1), k)


def mask_intersections(mask: np.ndarray, voxel: np.ndarray, weights: np.ndarray, k: int) -> csr_matrix:
    """(K, K) sparse: entry (i, j) = the sum of ``weights`` (V,) over the voxels in masks i and j (the diagonal:
    each mask's area), from the masks' (E,) entries ``mask``, ``voxel`` (each pair once).

    The voxels covered by the same set of masks add the same to every pair of that set, and Mask3D's parts
    cover a room with few such sets (the 200k-point bench room: 2,141 sets over 91,790 voxels and 737k
    entries), so the product runs over the sets. A voxel's set is found by a sum of random integer keys of
    its masks, then checked exactly: every voxel holds as many masks as its set's first voxel, each of them
    in that voxel's set. A failed check (two sets with one sum) multiplies over the voxels instead, as does a
    membership table above :data:`MASK_SET_TABLE` cells.
    """
    n_vox = len(weights)
    if mask.size == 0:
        return csr_matrix((k, k))
    count = np.bincount(voxel, minlength=n_vox)
    total = torch.zeros(n_vox, dtype=torch.int64).index_add_(0, torch.from_numpy(voxel),
                                                             torch.from_numpy(_mask_keys(k)[mask])).numpy()
    covered = np.flatnonzero(count)
    _, first, set_of = np.unique(total[covered], return_index=True, return_inverse=True)
    set_of, n_sets = set_of.reshape(-1), len(first)
    if n_sets * k <= MASK_SET_TABLE:
        voxel_set = np.full(n_vox, -1, np.int64)
        voxel_set[covered] = set_of
        first_voxel = covered[first]
        entry_set = voxel_set[voxel]
        rep = voxel == first_voxel[entry_set]                                   # the entries of each set's
        member = np.zeros((n_sets, k), bool)                                    # first voxel
        member[entry_set[rep], mask[rep]] = True
        if (count[covered] == count[first_voxel][set_of]).all() and member[entry_set, mask].all():
            set_weight = np.bincount(set_of, weights=weights[covered], minlength=n_sets)
            rows, cols = entry_set[rep], mask[rep]
            weighted = csr_matrix((set_weight[rows], (rows, cols)), shape=(n_sets, k))
            return (weighted.T @ csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_sets, k))).tocsr()
    weighted = csr_matrix((weights[voxel], (mask, voxel)), shape=(k, n_vox))
    return (weighted @ csr_matrix((np.ones(voxel.size), (mask, voxel)), shape=(k, n_vox)).T).tocsr()


def _part_scores(parts: MaskParts, objectness: torch.Tensor, mask_logits: torch.Tensor,
                 points_per_voxel: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each part's score (objectness of its query * mean sigmoid of its query's logits over its voxels) and
    points (K,), and each atom's points (T,): sums over atoms, the sigmoids summed per (atom, query)."""
    atom = torch.from_numpy(parts.voxel_atom()).to(mask_logits.device)
    voxel = torch.from_numpy(parts.voxel).to(mask_logits.device)
    n_atoms = len(parts.atom_sizes)
    atom_points = torch.zeros(n_atoms, dtype=torch.float64, device=atom.device).index_add_(
        0, atom, points_per_voxel[voxel].double()).cpu().numpy()
    heat = torch.zeros((n_atoms, mask_logits.shape[1]), device=atom.device).index_add_(
        0, atom, mask_logits[voxel].float().sigmoid()).cpu().numpy()
    k = len(parts.part_query)
    query = parts.part_query[parts.entry_part]
    points = np.bincount(parts.entry_part, weights=atom_points[parts.entry_atom], minlength=k)
    voxels = np.bincount(parts.entry_part, weights=parts.atom_sizes[parts.entry_atom], minlength=k)
    heat_sum = np.bincount(parts.entry_part, weights=heat[parts.entry_atom, query], minlength=k)
    objectness = objectness.double().cpu().numpy()[parts.part_query]
    return (objectness * heat_sum / np.maximum(voxels, 1)).astype(np.float32), points, atom_points


def class_agnostic_proposals(pred_logits: torch.Tensor, mask_logits: torch.Tensor, inverse_map: torch.Tensor,
                             voxel_xyz: torch.Tensor, cfg: PostprocessConfig = PostprocessConfig()):
    """One proposal per query (or DBSCAN part), mask NMS; FOLK's use of Mask3D.

    pred_logits (Q, C+1); mask_logits (V, Q); inverse_map (N,); voxel_xyz (V, 3).
    mask = sigmoid(logit) > ``cfg.mask_threshold`` (Mask3D: 0.5; a lower threshold recovers the
    whole object where a model's mask probabilities are low at its edges),
    score = (1 - p(no-object)) * mean sigmoid inside the mask.  Masks with fewer than
    ``cfg.min_points`` points (at least one) and scores <= ``cfg.min_score`` are dropped;
    NMS at ``cfg.nms_iou`` (IoU over points).
    Returns the M voxel masks (:class:`VoxelMasks`, M x V) and scores (M,) float32, by descending score
    (a point's mask bit is its voxel's: ``masks.to_points(inverse_map)``).
    """
    objectness = 1.0 - pred_logits.float().softmax(-1)[:, -1]
    points_per_voxel = torch.bincount(inverse_map, minlength=mask_logits.shape[0])
    min_points = max(cfg.min_points, 1)
    if cfg.use_dbscan:   # sizes, scores and NMS over the parts' atoms; voxels listed for the kept parts only
        parts = mask_parts(mask_logits, voxel_xyz, cfg.dbscan_eps, cfg.dbscan_min_points, cfg.mask_logit_threshold)
        scores, points, atom_points = _part_scores(parts, objectness, mask_logits, points_per_voxel)
        keep = np.flatnonzero((points >= min_points) & (scores > cfg.min_score))
        column = np.full(len(scores), -1, np.int64)
        column[keep] = np.arange(len(keep))
        entry = column[parts.entry_part] >= 0
        scores = torch.from_numpy(scores[keep])                      # on the CPU, as the parts
        kept = mask_nms(torch.from_numpy(parts.entry_atom[entry]), torch.from_numpy(column[parts.entry_part[entry]]),
                        scores, cfg.nms_iou, torch.from_numpy(atom_points))
        masks = parts.voxel_masks(keep[kept.numpy()], mask_logits.shape[0])
        return masks.to(mask_logits.device), scores[kept].to(mask_logits.device)
    binary, mscore = mask_scores(mask_logits, cfg.mask_logit_threshold)
    scores = objectness * mscore
    points = points_per_voxel.to(torch.float32) @ binary.to(torch.float32)     # (K,) points per proposal
    keep = ((points >= min_points) & (scores > cfg.min_score)).nonzero().flatten()
    scores = scores[keep]
    voxel, mask = binary[:, keep].nonzero(as_tuple=True)
    kept = mask_nms(voxel, mask, scores, cfg.nms_iou, points_per_voxel)
    candidates = VoxelMasks.from_entries(mask, voxel, (scores.numel(), mask_logits.shape[0]))
    return candidates.select(kept), scores[kept]
