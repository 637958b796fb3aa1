"""Loading checkpoint files without running code from them.

``torch.load`` unpickles, and unpickling can call any function a file names: a checkpoint from
elsewhere could run code on the robot. :func:`load_weights` loads with ``weights_only=True`` (tensors,
containers, numbers and strings only), which is all our checkpoints need. A foreign file that
needs more (e.g. a Lightning checkpoint whose hyper-parameters are pickled objects) is refused with one
line naming what it asks for, unless the caller opts in explicitly (``allow_unsafe``, the node's
``allow_unsafe_checkpoints`` parameter) for a file it trusts.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class UnsafeCheckpointError(ValueError):
    """A checkpoint that can only be loaded by full unpickling, which was not allowed."""


def load_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu", allow_unsafe: bool = False,
                 what: str = "checkpoint"):
    """``torch.load(path)`` restricted to weights (no code from the file runs).

    Args:
        path: the file. map_location: as torch.load's.
        allow_unsafe: load by full unpickling when the file needs it (only for files you trust).
        what: how the error message names the file (e.g. "Mask3D checkpoint").

    Raises:
        FileNotFoundError: no file. UnsafeCheckpointError: the file needs full unpickling and
        ``allow_unsafe`` is False.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        needs = _unsupported_global(str(err))
        if not allow_unsafe:
            raise UnsafeCheckpointError(
                f"{what} {path} holds more than weights ({needs}); loading it would unpickle it, which can run "
                f"code from the file: refused. If you trust the file, allow it explicitly (node parameter "
                f"allow_unsafe_checkpoints:=true) or convert it to a weights-only file") from None
        log.warning("loading %s %s by full unpickling (%s): allowed by allow_unsafe", what, path, needs)
        return torch.load(path, map_location=map_location, weights_only=False)


def _unsupported_global(message: str) -> str:
    """The object a weights-only load refused, from torch's message (first line otherwise)."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message) or re.search(r"global '([\w.]+)'", message)
    return f"it names {found.group(1)}" if found else message.strip().splitlines()[0][:200]
