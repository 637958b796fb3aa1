"""The vocabularies the offline tools take by name, and their ScanNet200 ids (what the AP scorer needs)."""

from __future__ import annotations

import numpy as np

from folk_ros.core.vocabulary import validate_vocabulary
from training.data import scannet200
from training.data.synth_objects import category_names


def vocabulary(spec: str) -> tuple[str, ...]:
    """``synthetic`` (our generator's 41 categories), ``scannet200`` (its 200 classes) or ``a,b,c``."""
    if spec == "synthetic":
        return tuple(category_names())
    if spec == "scannet200":
        return tuple(scannet200.class_labels())
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    if not names:
        raise ValueError(f"empty vocabulary {spec!r}")
    return validate_vocabulary(names)


def label_ids_of(names: tuple[str, ...]) -> np.ndarray:
    """(K,) ScanNet200 ids of vocabulary names; ValueError for a name that is not a ScanNet200 class."""
    table = scannet200.name_to_id()
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"vocabulary names without a ScanNet200 id (cannot be scored): {missing[:5]}")
    return np.asarray([table[n] for n in names], np.int64)
