"""Label-guided distillation losses (paper section 3.3, Eq. 11-12).

The paper's formulas were lost from our copy; its words are:

* Eq. 11: "we employ the contrastive loss between the 2D CLIP embeddings of the teacher
  model and the 3D instance embeddings produced by the student model [...] Here, N
  represents the total number of instance proposals, and tau is the temperature
  parameter." We read it as InfoNCE over the batch's N instances with the student
  embedding as the anchor, its own teacher target as the positive and the other
  instances' targets as the negatives, averaged over the N anchors::

      L_con = -1/N sum_i log( exp(cos(f_i, e_i)/tau) / sum_j exp(cos(f_i, e_j)/tau) )

  (one-directional, student -> teacher; ``symmetric=True`` averages it with the
  teacher -> student direction, as CLIP does, for experiments).
* Eq. 11 refinement (ours, ``mask_same_label_negatives``, default on): a target e_j with
  the same pseudo-label as instance i is dropped from i's denominator. Eq. 10 makes such
  targets near-duplicates (two chairs' targets are both "mean chair views"), so keeping
  them as negatives pushes f_i away from embeddings almost equal to its positive: an
  irreducible loss floor whose gradient fights the label term. ScanNet scenes hold many
  same-class instances (chairs, doors, windows), so this is the common case, not a corner.
* Eq. 12 label term: "we first utilize CLIP text embeddings to compute classification
  labels for the 3D embeddings [...] calculate the cross-entropy loss between the labels
  of the student model and the teacher model"::

      L_ce = -1/N sum_i log softmax_k( cos(f_i, t_k)/tau )[y_i]

  with the same tau (the paper names one temperature), which is also the temperature the
  Segmenter's softmax confidences should use.
* Eq. 12: L = lambda1 * L_con + lambda2 * L_ce, lambda1 = 0.2 and lambda2 = 0.8 (Table 5 best).

tau was lost too. We take 0.07, CLIP's initial temperature (logit scale 1/0.07 ~ 14.3):
it keeps softmax over cosines in [-1, 1] sharp enough to separate 200 classes (a margin
of 0.1 in cosine is a factor e^1.43 ~ 4.2 in probability) without the near-hard-max of
CLIP's trained scale 100, and it is the usual value in CLIP distillation work.

All inputs are L2-normalised here, so raw (unnormalised) vectors may be passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DistillLossConfig:
    """Weights and temperature of Eq. 11-12."""

    lambda_contrastive: float = 0.2  # lambda1, Eq. 12 (paper Table 5 best row)
    lambda_ce: float = 0.8           # lambda2, Eq. 12
    temperature: float = 0.07        # tau, Eq. 11 and the CE logits; lost from the paper, CLIP's init
    symmetric: bool = False          # False: Eq. 11 as read (student anchors); True: mean of both directions
    mask_same_label_negatives: bool = True  # drop same-pseudo-label targets from the negatives (see module doc)

    def __post_init__(self) -> None:
        if self.lambda_contrastive < 0 or self.lambda_ce < 0:
            raise ValueError(f"loss weights must be >= 0, got lambda_contrastive={self.lambda_contrastive}, "
                             f"lambda_ce={self.lambda_ce}")
        if self.lambda_contrastive == 0 and self.lambda_ce == 0:
            raise ValueError("at least one of lambda_contrastive, lambda_ce must be > 0")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def _check_batch(student: torch.Tensor, other: torch.Tensor, name: str) -> None:
    if student.ndim != 2 or student.shape[0] < 1:
        raise ValueError(f"student embeddings must be (B >= 1, C), got {tuple(student.shape)}")
    if other.ndim != 2 or other.shape[1] != student.shape[1]:
        raise ValueError(f"{name} must be (*, C={student.shape[1]}), got {tuple(other.shape)}")


def _check_labels(labels: torch.Tensor, b: int) -> None:
    if labels.shape != (b,) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be (B={b},) integer, got {tuple(labels.shape)} {labels.dtype}")


def contrastive_loss(student: torch.Tensor, target: torch.Tensor, tau: float,
                     labels: Optional[torch.Tensor] = None, symmetric: bool = False) -> torch.Tensor:
    """Scalar InfoNCE of Eq. 11 over the B instances of a batch.

    Args:
        student: (B, C) student embeddings f_i.
        target: (B, C) teacher targets e_i (Eq. 10), row i the positive of row i.
        tau: temperature.
        labels: optional (B,) int pseudo-labels; when given, target j != i with
            labels[j] == labels[i] is left out of anchor i's denominator.
        symmetric: also use each target as an anchor against the students, and average.
    """
    _check_batch(student, target, "target")
    if target.shape[0] != student.shape[0]:
        raise ValueError(f"target must have B={student.shape[0]} rows, got {target.shape[0]}")
    b = student.shape[0]
    logits = F.normalize(student, dim=1) @ F.normalize(target, dim=1).T / tau   # (B, B)
    if labels is not None:
        _check_labels(labels, b)
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, -torch.inf)   # symmetric mask: valid for logits.T too
    positives = torch.arange(b, device=logits.device)
    loss = F.cross_entropy(logits, positives)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, positives))
    return loss


def label_ce_loss(student: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Scalar cross-entropy of Eq. 12's label term.

    Args:
        student: (B, C) student embeddings.
        text: (K, C) CLIP text embeddings of the training vocabulary.
        labels: (B,) int pseudo-labels in [0, K) (Eq. 9).
        tau: temperature of the cosine logits.
    """
    _check_batch(student, text, "text")
    _check_labels(labels, student.shape[0])
    if int(labels.min()) < 0 or int(labels.max()) >= text.shape[0]:
        raise ValueError(f"labels must lie in [0, K={text.shape[0]}), got [{int(labels.min())}, {int(labels.max())}]")
    logits = F.normalize(student, dim=1) @ F.normalize(text, dim=1).T / tau      # (B, K)
    return F.cross_entropy(logits, labels.long())


class DistillLoss(nn.Module):
    """Eq. 12: ``lambda1 * contrastive + lambda2 * ce``; returns the named terms."""

    def __init__(self, cfg: DistillLossConfig = DistillLossConfig()) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, student: torch.Tensor, target: torch.Tensor, text: torch.Tensor,
                labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{'contrastive', 'ce', 'loss'} scalars for a batch.

        Args:
            student: (B, C) student embeddings.
            target: (B, C) teacher targets (Eq. 10) of the same instances.
            text: (K, C) text embeddings of the training vocabulary.
            labels: (B,) int pseudo-labels (Eq. 9).
        """
        cfg = self.cfg
        con = contrastive_loss(student, target, cfg.temperature,
                               labels=labels if cfg.mask_same_label_negatives else None,
                               symmetric=cfg.symmetric)
        ce = label_ce_loss(student, text, labels, cfg.temperature)
        return {"contrastive": con, "ce": ce, "loss": cfg.lambda_contrastive * con + cfg.lambda_ce * ce}
