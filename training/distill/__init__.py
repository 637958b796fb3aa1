"""Label-guided distillation of the FOLK student (paper section 3.3, Eq. 8-12).

``pseudo_labels`` (in :mod:`training.teacher.pseudo_labels`, which the teacher's voting uses too) turns the
teacher's multi-view embeddings into pseudo-labels and targets (Eq. 8-10); ``losses`` holds the contrastive
and label terms (Eq. 11-12).
"""

from .losses import DistillLoss, DistillLossConfig, contrastive_loss, label_ce_loss
from training.teacher.pseudo_labels import PseudoLabels, pseudo_labels

__all__ = ["DistillLoss", "DistillLossConfig", "PseudoLabels", "contrastive_loss", "label_ce_loss",
           "pseudo_labels"]
