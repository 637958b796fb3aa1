"""Atomic JSON and text writes for the offline tools (:mod:`folk_ros.core.atomic` underneath).

A reader (or a resumed run) sees the old file or the new one, never half of one; a failed write
leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from folk_ros.core.atomic import write_text_atomic  # noqa: F401  (re-exported: the tools import it from here)


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 1, **dumps_kwargs) -> Path:
    """``json.dumps(obj, indent=indent, **dumps_kwargs)`` written with :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, **dumps_kwargs))
