"""What a vocabulary is, checked in one place: a non-empty sequence of distinct non-empty names. The CLIP
text encoder, the segmenter, the live map, the node's parameter and the offline tools all accept exactly
this (the node adds its size caps, ``max_vocabulary`` and ``max_name_length``, in front)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def validate_vocabulary(vocabulary) -> tuple[str, ...]:
    """A non-empty sequence of distinct non-empty strings as a tuple, or ValueError saying what is wrong."""
    if isinstance(vocabulary, str) or not isinstance(vocabulary, Sequence):
        raise ValueError(f"vocabulary must be a list of names, got {type(vocabulary).__name__}")
    names = tuple(vocabulary)
    if not names:
        raise ValueError("vocabulary is empty: give at least one name")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"vocabulary entries must be non-empty strings, got {bad[:5]!r}")
    dupes = sorted(n for n, count in Counter(names).items() if count > 1)   # linear, not names.count per name
    if dupes:
        raise ValueError(f"vocabulary has duplicate names {dupes[:5]}")
    return names
