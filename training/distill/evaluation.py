"""What a distillation epoch is judged by: the student's agreement with the pseudo-labels and GT labels, the
loss, and which of those picks ``best.pt``."""

from __future__ import annotations

import torch

from folk_ros.core.student import Student
from training.distill.instances import InstanceSet
from training.distill.losses import DistillLoss


@torch.no_grad()
def evaluate(student: Student, data: InstanceSet, text: torch.Tensor, loss_fn: DistillLoss,
             batch_size: int) -> dict:
    """Agreement of the student's labels with the pseudo-labels and GT labels, and the loss (eval mode).

    Returns pseudo_acc, gt_acc (None without GT), teacher_gt_acc (pseudo-label vs GT), gt_instances, loss.
    """
    was_training = student.training
    student.eval()
    try:
        emb = torch.cat([student.project(x) for x in data.features.split(4096)])      # (I, C)
        pred = (emb @ text.T).argmax(dim=1)                                          # (I,)
        losses = [(loss_fn(emb[i], data.targets[i], text, data.labels[i])["loss"], len(i))
                  for i in torch.arange(len(data), device=emb.device).split(batch_size)]
    finally:
        student.train(was_training)
    has_gt = data.gt >= 0
    n_gt = int(has_gt.sum())
    return {"pseudo_acc": float((pred == data.labels).float().mean()),
            "gt_acc": float((pred[has_gt] == data.gt[has_gt]).float().mean()) if n_gt else None,
            "teacher_gt_acc": float((data.labels[has_gt] == data.gt[has_gt]).float().mean()) if n_gt else None,
            "gt_instances": n_gt,
            "loss": float(sum(float(v) * n for v, n in losses) / len(data))}


def select_metric(select: str, val: InstanceSet) -> tuple[str, bool]:
    """(metric key in the epoch record, higher is better) that picks best.pt; ``select``: auto, gt, pseudo or loss."""
    choice = select
    if choice == "auto":
        choice = "gt" if int((val.gt >= 0).sum()) else "pseudo"
    if choice == "gt" and not int((val.gt >= 0).sum()):
        raise ValueError("--select gt: the validation caches hold no GT labels in the vocabulary")
    return {"gt": ("val_gt_acc", True), "pseudo": ("val_pseudo_acc", True), "loss": ("val_loss", False)}[choice]


def better(rec: dict, best: dict, higher: bool) -> bool:
    """Whether epoch record ``rec`` beats ``best`` on the selection metric; equal values go to the lower val loss."""
    value, ref = rec[best["metric"]], best["value"]
    if value != ref:
        return value > ref if higher else value < ref
    return rec["val_loss"] < best["val_loss"]
