"""The synthetic-world CLIP's two objectives (see :mod:`training.clip.train`): the class-level crop contrastive
loss and the dense mask-pooled classification loss (Eq. 6's pooling, then cross-entropy over the prompts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.teacher.mask_pooling import pool_mask_features


def crop_contrastive_loss(image: torch.Tensor, text: torch.Tensor, targets: torch.Tensor,
                          scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Class-level CLIP loss of B crops against K class prompts.

    Args:
        image: (B, D) L2-normalised crop embeddings.
        text: (K, D) L2-normalised prompt embeddings of the vocabulary.
        targets: (B,) int64 class index of each crop.
        scale: () logit scale (exp of CLIP's learnt log-temperature).

    Returns:
        {"i2t": CE over the K prompts, "t2i": per present class, CE of a softmax over the B
        crops against a uniform target on that class's crops, "loss": their mean}.
    """
    logits = scale * image @ text.T                                   # (B, K)
    i2t = F.cross_entropy(logits, targets)
    present = torch.unique(targets)                                   # (C,)
    positive = (targets[None, :] == present[:, None]).float()         # (C, B)
    log_p = F.log_softmax(logits.T[present], dim=1)                   # (C, B)
    t2i = -((positive / positive.sum(1, keepdim=True)) * log_p).sum(1).mean()
    return {"i2t": i2t, "t2i": t2i, "loss": 0.5 * (i2t + t2i)}


def dense_mask_loss(features: torch.Tensor, masks: torch.Tensor, image_index: torch.Tensor,
                    targets: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mask-pooled dense features (Eq. 6 without the perceptron) classified over the prompts.

    Args:
        features: (B, D, h, w) MaskCLIP dense features (normalised along D).
        masks: (M, H, W) bool GT instance masks; image_index: (M,) int64 frame of each mask.
        targets: (M,) int64 class index; text: (K, D); scale: () logit scale.

    Returns:
        {"loss": CE, "acc": share of masks whose argmax is right (no gradient)}.
    """
    pooled = F.normalize(pool_mask_features(features, masks, image_index), dim=-1)  # (M, D)
    logits = scale * pooled @ text.T                                                 # (M, K)
    return {"loss": F.cross_entropy(logits, targets),
            "acc": (logits.argmax(1) == targets).float().mean().detach()}
