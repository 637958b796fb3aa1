"""ScanNet200 benchmark constants: label ids and names, head/common/tail splits, colours.

Loaded once from ``scannet200.json`` beside this file (a copy of the benchmark's
``scannet200_constants.py`` / ``scannet200_splits.py`` as data).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

_JSON = Path(__file__).with_name("scannet200.json")


@lru_cache(maxsize=1)
def _constants() -> dict:
    with open(_JSON, encoding="utf-8") as f:
        return json.load(f)


def class_ids() -> tuple[int, ...]:
    """The 200 valid ScanNet200 label ids, in benchmark order."""
    return tuple(_constants()["class_ids"])


def class_labels() -> tuple[str, ...]:
    """The 200 ScanNet200 label names, aligned with :func:`class_ids`."""
    return tuple(_constants()["class_labels"])


@lru_cache(maxsize=1)
def name_to_id() -> dict[str, int]:
    return dict(zip(class_labels(), class_ids()))


@lru_cache(maxsize=1)
def id_to_name() -> dict[int, str]:
    return dict(zip(class_ids(), class_labels()))


def label_id(name: str) -> int:
    """ScanNet200 id of a label name; KeyError with the name if it is not a ScanNet200 class."""
    try:
        return name_to_id()[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a ScanNet200 class name") from None


def splits() -> dict[str, tuple[str, ...]]:
    c = _constants()
    return {s: tuple(c[s]) for s in ("head", "common", "tail")}


def color_of(label: int) -> tuple[int, int, int]:
    """Benchmark visualisation colour (0..255 RGB) of a label id (black for unknown ids)."""
    rgb = _constants()["color_map"].get(str(int(label)), [0.0, 0.0, 0.0])
    return tuple(int(v) for v in rgb)


def instance_eval_settings() -> dict:
    """Benchmark settings: ignored labels, IoU thresholds, minimum region size, formats."""
    return dict(_constants()["instance_eval"])
