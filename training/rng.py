"""The random state a resumable training run saves with its checkpoint and restores on resume: Python's
``random``, torch's CPU generator and, when the run draws from one, a numpy ``Generator``. Restoring reads
only the parts a state holds, so checkpoints written before a part was saved still resume."""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_state(rng: np.random.Generator | None = None) -> dict:
    """``{"python", "torch"[, "numpy"]}``: what :func:`set_rng_state` restores."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if rng is not None:
        state["numpy"] = rng.bit_generator.state
    return state


def set_rng_state(state: dict, rng: np.random.Generator | None = None) -> None:
    """Restore the generators of ``state`` (those it holds; ``rng``'s from ``state["numpy"]``)."""
    if "python" in state:
        random.setstate(state["python"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if rng is not None and "numpy" in state:
        rng.bit_generator.state = state["numpy"]
