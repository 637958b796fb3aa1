"""Atomic file writes for the offline tools: a temporary file beside the target, then a rename.

A reader (or a resumed run) sees the old file or the new one, never half of one; a failed write
leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 1, **dumps_kwargs) -> Path:
    """``json.dumps(obj, indent=indent, **dumps_kwargs)`` written with :func:`write_text_atomic`."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, **dumps_kwargs))
