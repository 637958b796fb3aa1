"""Atomic JSON, text and torch writes for the offline tools (:mod:`folk_ros.core.atomic` underneath).

A reader (or a resumed run) sees the old file or the new one, never half of one; a failed write
leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from folk_ros.core.atomic import atomic_path, write_text_atomic  # noqa: F401  (re-exported for the tools)


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 1, **dumps_kwargs) -> Path:
    """``json.dumps(obj, indent=indent, **dumps_kwargs)`` written with :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, **dumps_kwargs))


def torch_save_atomic(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` written through :func:`atomic_path` (a kill mid-write keeps the old file)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
