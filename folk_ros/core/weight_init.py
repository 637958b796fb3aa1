"""Building a model whose weights are about to be loaded, without paying for its random initialisation.

A module's constructor fills its parameters through ``torch.nn.init`` (``nn.Linear`` -> ``kaiming_uniform_``,
``nn.LayerNorm`` -> ``ones_`` / ``zeros_``, open_clip's ``init_parameters`` -> ``normal_``): for open_clip's
ViT-L-14-336 that is 10.6 s of its 13.6 s load on one core, all of it overwritten by the checkpoint. Inside
:func:`no_weight_init` those fills do nothing (the tensors keep whatever memory they were allocated with),
the same device as Hugging Face's ``no_init_weights``.

Only for a model that is then loaded with ``strict=True`` (every parameter and persistent buffer comes from
the checkpoint, a missing one raises), and only while no other thread builds modules: the patch is global to
the process for the duration of the ``with`` block.
"""

from __future__ import annotations

import contextlib
import threading

import torch

# every fill of torch.nn.init a module constructor may call; each returns its tensor unchanged when skipped
FILLS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
         "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")
_lock = threading.Lock()


def _skipped(tensor, *args, **kwargs):
    return tensor


@contextlib.contextmanager
def no_weight_init():
    """``torch.nn.init``'s fills are no-ops inside the block (restored on exit, also on error)."""
    with _lock:
        saved = {name: getattr(torch.nn.init, name) for name in FILLS if hasattr(torch.nn.init, name)}
        try:
            for name in saved:
                setattr(torch.nn.init, name, _skipped)
            yield
        finally:
            for name, fill in saved.items():
                setattr(torch.nn.init, name, fill)
