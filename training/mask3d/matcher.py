"""Hungarian matching of Mask3D queries to ground-truth instances (as in Mask3D / Mask2Former).

The cost of assigning query q to GT instance g is

    C[q, g] = w_class * (-p_q(label_g)) + w_mask * BCE(mask_q, gt_g) + w_dice * Dice(mask_q, gt_g)

with BCE and Dice averaged over the (optionally sampled) points, and the assignment
minimising the total cost is found by ``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class MatcherConfig:
    cost_class: float = 2.0   # weight of -p(class); Mask3D's value
    cost_mask: float = 5.0    # weight of the mean sigmoid BCE over points
    cost_dice: float = 2.0    # weight of the dice cost
    num_points: int = -1      # points sampled for the mask costs (-1: all points, Mask3D's ScanNet setting)


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice cost of every (query, GT) pair.

    Args:
        logits: (Q, P) mask logits.
        targets: (G, P) float {0, 1} GT masks.
    Returns:
        (Q, G): 1 - (2 |s·t| + 1) / (|s| + |t| + 1) with s = sigmoid(logits).
    """
    s = logits.sigmoid()
    numerator = 2 * s @ targets.T
    denominator = s.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def pairwise_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid binary cross-entropy of every (query, GT) pair: (Q, P), (G, P) -> (Q, G).

    Uses BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), so the pair sum is two matmuls.
    """
    pos = F.softplus(-logits)  # cost where the target is 1
    neg = F.softplus(logits)   # cost where the target is 0
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


@torch.no_grad()
def hungarian_match(pred_logits: torch.Tensor, pred_masks: torch.Tensor, gt_labels: torch.Tensor,
                    gt_masks: torch.Tensor, cfg: MatcherConfig = MatcherConfig(),
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal one-to-one assignment of queries to GT instances of one scene.

    Args:
        pred_logits: (Q, C + 1) class logits (last column: no object).
        pred_masks: (P, Q) mask logits per point (Mask3D's layout).
        gt_labels: (G,) int64 class per GT instance, in [0, C).
        gt_masks: (G, P) bool or float GT masks.
        cfg: cost weights and point sampling.
        generator: for the point sample when ``cfg.num_points > 0``.
    Returns:
        (query indices (K,), GT indices (K,)) int64 with K = min(Q, G), sorted by query.
    """
    num_queries, num_gt = pred_logits.shape[0], gt_labels.shape[0]
    if pred_masks.shape[1] != num_queries or gt_masks.shape[0] != num_gt or \
            gt_masks.shape[1] != pred_masks.shape[0]:
        raise ValueError(f"inconsistent shapes: pred_logits {tuple(pred_logits.shape)}, pred_masks "
                         f"{tuple(pred_masks.shape)}, gt_labels {tuple(gt_labels.shape)}, "
                         f"gt_masks {tuple(gt_masks.shape)}")
    empty = torch.zeros(0, dtype=torch.int64)
    if num_gt == 0 or num_queries == 0:
        return empty, empty
    masks = pred_masks.T.float()       # (Q, P)
    targets = gt_masks.float()         # (G, P)
    if 0 < cfg.num_points < masks.shape[1]:
        idx = torch.randperm(masks.shape[1], generator=generator)[:cfg.num_points].to(masks.device)
        masks, targets = masks[:, idx], targets[:, idx]
    prob = pred_logits.float().softmax(-1)
    cost = (cfg.cost_class * -prob[:, gt_labels]
            + cfg.cost_mask * pairwise_bce_cost(masks, targets)
            + cfg.cost_dice * pairwise_dice_cost(masks, targets))
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)
