"""Label-guided targets from the teacher's multi-view embeddings (paper section 3.3, Eq. 8-10).

For instance i with view embeddings e_i^1..e_i^V (one per selected view, Sec. 3.1) and
CLIP text embeddings t_1..t_K of the candidate categories:

* Eq. 8: each view gets the label of its nearest text embedding, y_i^v = argmax_k cos(e_i^v, t_k);
* Eq. 9: the instance's pseudo-label is the most frequent view label (multi-view voting);
* Eq. 10: its target is the mean of the views whose label equals the pseudo-label.

Views come ragged, one row per (instance, view): ``view_embeddings`` (V, C) with
``view_instance`` (V,) giving each row's instance in [0, M). This is what a per-scene
cache stores without padding; everything is computed with ``bincount`` / ``index_add_``
over all views at once (memory O(V*K + M*K)).

Conventions (the paper leaves them open):
* A view is *usable* when it is marked valid (``view_valid``, default all), finite and
  of non-zero norm. Instances with fewer than ``min_views`` usable views (default 1, i.e.
  none at all) are skipped and counted in ``num_skipped``.
* Ties in the vote (two labels with the same number of views) go to the label whose views
  have the larger summed cosine similarity to that label's text embedding; an exact tie
  of that sum too goes to the lower label index.
* Views are L2-normalised before averaging, and the mean is L2-normalised (targets live
  on the unit sphere, like the student's output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

_EPS = 1e-12


@dataclass(frozen=True)
class PseudoLabels:
    """Eq. 8-10 outputs for the M' kept instances of M.

    targets: (M', C) float, unit-norm mean of each kept instance's agreeing views (Eq. 10).
    labels: (M',) int64 pseudo-label in [0, K) (Eq. 9).
    instances: (M',) int64 ascending indices in [0, M) of the kept instances.
    agreement: (M',) float in (0, 1], agreeing views / usable views.
    num_views: (M',) int64 usable views of each kept instance.
    view_labels: (V,) int64 per-view label (Eq. 8), -1 for unusable views.
    num_skipped: instances with fewer than ``min_views`` usable views.
    num_unusable_views: views that were invalid, non-finite or zero.
    """

    targets: torch.Tensor
    labels: torch.Tensor
    instances: torch.Tensor
    agreement: torch.Tensor
    num_views: torch.Tensor
    view_labels: torch.Tensor
    num_skipped: int
    num_unusable_views: int


def _check_inputs(view_embeddings: torch.Tensor, view_instance: torch.Tensor, text_embeddings: torch.Tensor,
                  num_instances: int, view_valid: Optional[torch.Tensor], min_views: int) -> None:
    if view_embeddings.ndim != 2 or not view_embeddings.dtype.is_floating_point:
        raise ValueError(f"view_embeddings must be (V, C) float, got {tuple(view_embeddings.shape)} "
                         f"{view_embeddings.dtype}")
    v, c = view_embeddings.shape
    if text_embeddings.ndim != 2 or text_embeddings.shape[1] != c or text_embeddings.shape[0] < 1:
        raise ValueError(f"text_embeddings must be (K >= 1, C={c}), got {tuple(text_embeddings.shape)}")
    if view_instance.shape != (v,) or view_instance.dtype.is_floating_point or view_instance.dtype == torch.bool:
        raise ValueError(f"view_instance must be (V={v},) integer, got {tuple(view_instance.shape)} "
                         f"{view_instance.dtype}")
    if num_instances < 0:
        raise ValueError(f"num_instances must be >= 0, got {num_instances}")
    if v and (int(view_instance.min()) < 0 or int(view_instance.max()) >= num_instances):
        raise ValueError(f"view_instance must lie in [0, num_instances={num_instances}), "
                         f"got [{int(view_instance.min())}, {int(view_instance.max())}]")
    if view_valid is not None and (view_valid.shape != (v,) or view_valid.dtype != torch.bool):
        raise ValueError(f"view_valid must be (V={v},) bool, got {tuple(view_valid.shape)} {view_valid.dtype}")
    if min_views < 1:
        raise ValueError(f"min_views must be >= 1, got {min_views}")


def pseudo_labels(view_embeddings: torch.Tensor, view_instance: torch.Tensor, text_embeddings: torch.Tensor,
                  num_instances: int, view_valid: Optional[torch.Tensor] = None,
                  min_views: int = 1) -> PseudoLabels:
    """Pseudo-labels and targets of M instances from their teacher views (Eq. 8-10).

    Args:
        view_embeddings: (V, C) float teacher embeddings, one row per (instance, view).
        view_instance: (V,) int instance of each row, in [0, num_instances).
        text_embeddings: (K, C) float CLIP text embeddings of the candidate categories.
        num_instances: M; instances with no rows at all count as skipped.
        view_valid: optional (V,) bool; False marks a view the teacher could not embed.
        min_views: an instance needs at least this many usable views to be kept.

    Returns:
        :class:`PseudoLabels` (on ``view_embeddings``' device).

    Raises:
        ValueError: for bad shapes, dtypes or out-of-range instance indices.
    """
    _check_inputs(view_embeddings, view_instance, text_embeddings, num_instances, view_valid, min_views)
    dev = view_embeddings.device
    m, k = num_instances, text_embeddings.shape[0]
    if m == 0:  # then V == 0 too (checked)
        none = torch.zeros(0, dtype=torch.long, device=dev)
        return PseudoLabels(view_embeddings.new_zeros(0, view_embeddings.shape[1]), none, none,
                            view_embeddings.new_zeros(0), none, none, 0, 0)
    inst = view_instance.to(dev).long()

    # usable views: valid, finite, non-zero; the others are zeroed so that no NaN spreads
    usable = torch.isfinite(view_embeddings).all(dim=1)
    emb = torch.where(usable[:, None], view_embeddings, torch.zeros((), dtype=view_embeddings.dtype, device=dev))
    usable &= emb.norm(dim=1) > _EPS
    if view_valid is not None:
        usable &= view_valid.to(dev)
    emb = F.normalize(emb, dim=1, eps=_EPS)
    text = F.normalize(text_embeddings.to(device=dev, dtype=emb.dtype), dim=1, eps=_EPS)

    # Eq. 8: nearest text embedding of every view
    best_sim, view_label = (emb @ text.T).max(dim=1)                       # (V,), (V,)
    view_label = torch.where(usable, view_label, torch.full_like(view_label, -1))

    # Eq. 9: votes per (instance, label); ties broken by the summed similarity
    key = inst[usable] * k + view_label[usable]
    votes = torch.bincount(key, minlength=m * k).view(m, k)               # (M, K)
    sim_sum = torch.bincount(key, weights=best_sim[usable].double(), minlength=m * k).view(m, k)
    num_views = votes.sum(dim=1)                                          # (M,)
    is_top = votes == votes.max(dim=1, keepdim=True).values
    label = torch.where(is_top, sim_sum, torch.full_like(sim_sum, -torch.inf)).argmax(dim=1)  # (M,)

    # Eq. 10: normalised mean of the views that agree with their instance's label
    agree = usable & (view_label == label[inst])
    sums = emb.new_zeros(m, emb.shape[1]).index_add_(0, inst[agree], emb[agree])

    keep = num_views >= min_views
    kept = torch.nonzero(keep).flatten()
    agreeing = votes.gather(1, label[:, None]).squeeze(1)
    return PseudoLabels(
        targets=F.normalize(sums[kept], dim=1, eps=_EPS),
        labels=label[kept],
        instances=kept,
        agreement=(agreeing[kept].to(emb.dtype) / num_views[kept].to(emb.dtype)),
        num_views=num_views[kept],
        view_labels=view_label,
        num_skipped=int(m - len(kept)),
        num_unusable_views=int((~usable).sum()),
    )
