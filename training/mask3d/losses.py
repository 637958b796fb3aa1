"""Mask3D set criterion for (class-agnostic) training: matched BCE + dice masks, CE for the classes.

For every decoder output (the final one and each auxiliary layer) queries are matched to
the GT instances (:func:`training.mask3d.matcher.hungarian_match`), then

    L = w_ce * CE(logits, matched labels | no-object elsewhere; no-object weighted eos_coef)
      + w_mask * mean_k BCE(mask_k, gt_k) + w_dice * mean_k Dice(mask_k, gt_k)

summed over layers. The terms come back by name so a trainer can log them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from training.mask3d.matcher import MatcherConfig, hungarian_match


@dataclass(frozen=True)
class CriterionConfig:
    num_classes: int = 1      # C real classes; 1 = class-agnostic "object"
    weight_ce: float = 2.0    # Mask3D's loss weights
    weight_mask: float = 5.0
    weight_dice: float = 2.0
    eos_coef: float = 0.1     # CE weight of the no-object class
    matcher: MatcherConfig = field(default_factory=MatcherConfig)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over masks of 1 - (2 |s·t| + 1) / (|s| + |t| + 1); logits, targets (K, P)."""
    s = logits.sigmoid()
    numerator = 2 * (s * targets).sum(-1)
    denominator = s.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).mean()


def mask_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over masks of the mean-over-points sigmoid BCE; logits, targets (K, P)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1).mean()


class SetCriterion(nn.Module):
    """Loss of a batch of Mask3D outputs against GT instances.

    ``outputs`` follows Mask3D: ``pred_logits`` (B, Q, C + 1), ``pred_masks`` a list of B
    (P_b, Q) tensors, optional ``aux_outputs`` a list of dicts of the same two keys.
    ``targets`` is a list of B dicts with ``labels`` (G_b,) int64 and ``masks`` (G_b, P_b) bool.
    """

    def __init__(self, cfg: CriterionConfig = CriterionConfig()):
        super().__init__()
        self.cfg = cfg
        weight = torch.ones(cfg.num_classes + 1)
        weight[-1] = cfg.eos_coef
        self.register_buffer("empty_weight", weight)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        layers = [outputs, *outputs.get("aux_outputs", [])]
        terms = {}
        for i, layer in enumerate(layers):
            suffix = "" if i == 0 else f"_aux{i - 1}"
            for name, value in self._layer_loss(layer, targets).items():
                terms[name + suffix] = value
        cfg = self.cfg
        weights = {"loss_ce": cfg.weight_ce, "loss_mask": cfg.weight_mask, "loss_dice": cfg.weight_dice}
        terms["loss"] = sum(weights[k.split("_aux")[0]] * v for k, v in terms.items())
        return terms

    def _layer_loss(self, layer: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        logits_b, masks_b = layer["pred_logits"], layer["pred_masks"]
        if len(masks_b) != len(targets) or logits_b.shape[0] != len(targets):
            raise ValueError(f"{logits_b.shape[0]} predictions for {len(targets)} targets")
        ce_terms, pred_sel, gt_sel = [], [], []
        for logits, masks, tgt in zip(logits_b, masks_b, targets):
            q_idx, g_idx = hungarian_match(logits.detach(), masks.detach(), tgt["labels"], tgt["masks"],
                                           self.cfg.matcher)
            target_classes = torch.full((logits.shape[0],), self.cfg.num_classes, dtype=torch.int64,
                                        device=logits.device)
            target_classes[q_idx] = tgt["labels"][g_idx].to(logits.device)
            ce_terms.append(F.cross_entropy(logits, target_classes, self.empty_weight))
            pred_sel.append(masks[:, q_idx].T)
            gt_sel.append(tgt["masks"][g_idx].to(masks.dtype))
        loss_ce = torch.stack(ce_terms).mean()
        if sum(p.shape[0] for p in pred_sel) == 0:  # no GT anywhere: only the no-object CE
            zero = logits_b.sum() * 0.0
            return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
        # scenes have different point counts: average per scene, weighted by its matched masks
        counts = torch.tensor([p.shape[0] for p in pred_sel], dtype=torch.float32, device=loss_ce.device)
        w = counts / counts.sum()
        per_scene = [(mask_bce_loss(p, g), dice_loss(p, g)) if p.shape[0] else (p.sum(), p.sum())
                     for p, g in zip(pred_sel, gt_sel)]
        loss_mask = (w * torch.stack([m for m, _ in per_scene])).sum()
        loss_dice = (w * torch.stack([d for _, d in per_scene])).sum()
        return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}
