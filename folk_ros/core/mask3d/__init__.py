"""Mask3D (Schult et al., ICRA 2023) in pure PyTorch, loading official checkpoints.

``Mask3D(cfg).predict(xyz, rgb) -> Proposals`` (voxel masks and features; ``.masks`` (M, N) bool,
``.scores`` (M,), ``.point_features`` (N, D) per input point).
"""

from .checkpoint import LoadReport, load_checkpoint, save_checkpoint
from .config import BackboneConfig, Mask3DConfig, PostprocessConfig, preset
from .model import Mask3D, Proposals

__all__ = ["BackboneConfig", "LoadReport", "Mask3D", "Mask3DConfig", "PostprocessConfig", "Proposals",
           "load_checkpoint", "preset", "save_checkpoint"]
