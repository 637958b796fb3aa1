"""The synthetic-world CLIP's training vocabulary (object classes, background negatives, optionally the other
ScanNet200 names) and its prompts' text embeddings, differentiable."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from folk_ros.core.clip import ClipModel
from folk_ros.core.clip_text import encode_tokens
from training.clip.dataset import BACKGROUND_CLASSES, ViewSet
from training.data import scannet200


@dataclass(frozen=True)
class Vocabulary:
    """Training classes: objects first (indices 0..K_o-1), then background classes, then
    text-only negatives (names no training instance has; never a target)."""

    objects: tuple[str, ...]
    background: tuple[str, ...]
    negatives: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return self.objects + self.background + self.negatives

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def build_vocabulary(train: ViewSet, background: tuple[str, ...], scannet200_negatives: bool = False) -> Vocabulary:
    """Object classes with views in the training set (sorted) + the background classes present
    (+ with `scannet200_negatives`, the other ScanNet200 names, so that a teacher scoring the
    full benchmark vocabulary meets no prompt the model never saw)."""
    objects = tuple(sorted(train.class_counts()))
    if not objects:
        raise ValueError("the training scenes give no object views (check min_pixels and the labels)")
    present = set(train.all_classes())
    back = tuple(b for b in background if b in present)
    known = set(objects) | set(back)
    negatives = tuple(n for n in scannet200_object_names(background) if n not in known) if scannet200_negatives else ()
    return Vocabulary(objects, back, negatives)


def scannet200_object_names(background: tuple[str, ...] = BACKGROUND_CLASSES) -> tuple[str, ...]:
    """The ScanNet200 class names minus the background classes (the teacher's usual vocabulary)."""
    return tuple(n for n in scannet200.class_labels() if n not in set(background))


def tokenize(clip: ClipModel, names: tuple[str, ...], template: str) -> torch.Tensor:
    """(K, context) token ids of the prompts ``template`` filled with each name."""
    return clip.tokenizer([template.replace("{}", n) for n in names]).to(clip.device)


def text_embeddings(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(K, D) L2-normalised text embeddings of (K, context) padded token ids; differentiable (no cache, unlike
    ClipModel.encode_text). The text tower runs over the prompts' own length
    (:func:`folk_ros.core.clip_text.encode_tokens`: same output as ``model.encode_text``, ~7x less compute)."""
    return F.normalize(encode_tokens(model, tokens).float(), dim=-1)
