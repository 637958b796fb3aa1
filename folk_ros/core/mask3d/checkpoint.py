"""Load Mask3D weights: official Lightning checkpoints, plain state dicts, our own checkpoints.

All key repair lives here (the model class stays clean):

* Lightning ``.ckpt``: ``{"state_dict": {"model.<key>": ...,
  "criterion.empty_weight": ...}}`` -> strip ``model.``, drop ``criterion.*``.
* plain state dict (``{key: tensor}``), with or without the ``model.`` prefix.
* ours (:func:`save_checkpoint`): ``{"format": "folk_ros.mask3d", "config": {...},
  "state_dict": {...}, ...}``; the config rebuilds the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from folk_ros.core.atomic import atomic_path
from folk_ros.core.checkpoint_io import load_weights

from .config import Mask3DConfig
from .model import Mask3D

FORMAT = "folk_ros.mask3d"
_DROPPED_PREFIXES = ("criterion.",)


@dataclass
class LoadReport:
    """What did not match between a checkpoint and the model."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, ckpt, model
    dropped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        lines = []
        for title, items in (("missing in checkpoint", self.missing),
                             ("unexpected in checkpoint", self.unexpected)):
            if items:
                lines.append(f"{len(items)} {title}: " + ", ".join(items[:20])
                             + (" ..." if len(items) > 20 else ""))
        for k, a, b in self.shape_mismatch[:20]:
            lines.append(f"shape mismatch {k}: checkpoint {list(a)} vs model {list(b)}")
        if self.dropped:
            lines.append(f"dropped (not model weights): {', '.join(self.dropped)}")
        return "\n".join(lines) if lines else "all keys match"


def extract_state_dict(obj: dict) -> tuple[dict[str, torch.Tensor], dict | None, list[str]]:
    """(model state dict with official key names, our config dict or None, dropped keys)."""
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint must be a dict, got {type(obj).__name__}")
    config = obj.get("config") if obj.get("format") == FORMAT else None
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError("checkpoint has no state dict of tensors (expected 'state_dict' or a plain dict)")
    out, dropped = {}, []
    prefixed = any(k.startswith("model.") for k in sd)
    for k, v in sd.items():
        if k.startswith(_DROPPED_PREFIXES):
            dropped.append(k)
        elif prefixed:
            if k.startswith("model."):
                out[k[len("model."):]] = v
            else:
                dropped.append(k)
        else:
            out[k] = v
    return out, config, dropped


def compare_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> LoadReport:
    """Key and shape differences between ``sd`` and ``model.state_dict()``."""
    own = model.state_dict()
    rep = LoadReport(missing=sorted(set(own) - set(sd)), unexpected=sorted(set(sd) - set(own)))
    rep.shape_mismatch = [(k, tuple(sd[k].shape), tuple(own[k].shape))
                          for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    return rep


def load_into(model: Mask3D, obj: dict, strict: bool = True) -> LoadReport:
    """Load a checkpoint dict into ``model``; strict raises ValueError with the report."""
    sd, _, dropped = extract_state_dict(obj)
    rep = compare_state_dict(model, sd)
    rep.dropped = dropped
    if strict and not rep.ok:
        raise ValueError(f"checkpoint does not match the Mask3D model:\n{rep}")
    good = {k: v for k, v in sd.items() if k not in {m[0] for m in rep.shape_mismatch}}
    model.load_state_dict(good, strict=False)
    return rep


def load_checkpoint(path: str | os.PathLike, cfg: Mask3DConfig | None = None, strict: bool = True,
                    map_location: str | torch.device = "cpu", allow_unsafe: bool = False) -> tuple[Mask3D, LoadReport]:
    """Build a Mask3D and load ``path`` (weights only: :func:`folk_ros.core.checkpoint_io.load_weights`;
    ``allow_unsafe`` admits a trusted file that needs full unpickling).

    The config comes from ``cfg``, else from the checkpoint (ours), else the
    official ScanNet200 defaults.  Returns (model in eval mode, report).
    """
    obj = load_weights(path, map_location, allow_unsafe, what="Mask3D checkpoint")
    _, saved_cfg, _ = extract_state_dict(obj)
    if cfg is None:
        cfg = Mask3DConfig.from_dict(saved_cfg) if saved_cfg is not None else Mask3DConfig()
    model = Mask3D(cfg).to(map_location)
    rep = load_into(model, obj, strict=strict)
    return model.eval(), rep


def save_checkpoint(path: str | os.PathLike, model: Mask3D, **extra) -> None:
    """Write ``{"format", "config", "state_dict", **extra}`` atomically (temp file + rename)."""
    obj = {"format": FORMAT, "config": model.cfg.to_dict(), "state_dict": model.state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
