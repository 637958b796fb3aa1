"""Mask3D (Schult et al., ICRA 2023) on the pure-PyTorch sparse backend.

``Mask3D = Res16UNet34C backbone + QueryDecoder``; the state dict has the
official key names (``backbone.*``, ``cross_attention.0.0.*``, ``pos_enc.gauss_B``...),
so an official checkpoint loads with :func:`folk_ros.core.mask3d.checkpoint.load_checkpoint`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from ..sparse import SparseTensor
from ..voxel_masks import VoxelMasks
from .backbone import Res16UNet34C
from .config import Mask3DConfig, PostprocessConfig
from .decoder import QueryDecoder
from .postprocess import class_agnostic_proposals
from .preprocess import point_inputs, to_uint8_colors, voxelize


COARSEST_STRIDE = 16
"""Voxels per cell at the backbone's coarsest level (Res16UNet34C: four stride-2 stages), decoder level 0."""


class CloudTooSmallError(ValueError):
    """The cloud covers a single cell of Mask3D's coarsest level: there is nothing to attend over."""


def check_extent(coords: np.ndarray, voxel_size: float) -> None:
    """CloudTooSmallError unless the voxel coordinates span >= 2 cells at :data:`COARSEST_STRIDE`."""
    cells = np.floor_divide(np.asarray(coords), COARSEST_STRIDE)
    if len(cells) == 0 or (cells == cells[0]).all():      # one cell (np.unique over rows: 100 ms at 100k)
        edge = COARSEST_STRIDE * voxel_size
        raise CloudTooSmallError(
            f"the cloud fits in one {edge:.2f} m cell of Mask3D's coarsest level ({COARSEST_STRIDE} voxels of "
            f"{voxel_size} m); Mask3D needs a cloud spanning at least two such cells")


@dataclass(frozen=True, eq=False)
class Proposals:
    """Class-agnostic instance proposals of one cloud, kept at voxel level.

    Every point of a voxel shares the voxel's mask bits and features, so the proposals are stored per
    voxel (V << N on dense clouds), the masks as their entries, and expanded to points only when asked
    (:attr:`masks`, :attr:`point_features`, computed once).

    voxel_masks: the M masks over V voxels (:class:`VoxelMasks`); scores (M,) float32 in [0, 1],
    descending; voxel_features (V, D) float32 (D = 96 backbone or 128 mask features); inverse_map (N,)
    int64 point -> voxel; postprocess_ms: the time :func:`class_agnostic_proposals` took (mask threshold,
    DBSCAN split, NMS), a part of :meth:`Mask3D.predict`'s.
    """

    voxel_masks: VoxelMasks
    scores: torch.Tensor
    voxel_features: torch.Tensor
    inverse_map: torch.Tensor
    postprocess_ms: float = 0.0

    @cached_property
    def masks(self) -> torch.Tensor:
        """(M, N) bool masks over the input points (on the masks' device)."""
        return self.voxel_masks.to_points(self.inverse_map)

    @cached_property
    def point_features(self) -> torch.Tensor:
        """(N, D) float32 features of the input points (their voxel's)."""
        return self.voxel_features[self.inverse_map]

    @cached_property
    def voxel_points(self) -> torch.Tensor:
        """(V,) int64 number of input points in each voxel."""
        return torch.bincount(self.inverse_map, minlength=self.voxel_features.shape[0])

    @cached_property
    def point_counts(self) -> torch.Tensor:
        """(M,) int64 number of input points in each mask."""
        return self.voxel_masks.point_counts(self.voxel_points)


class Mask3D(QueryDecoder):
    """Backbone + query decoder.  See :meth:`forward` and :meth:`predict`."""

    def __init__(self, cfg: Mask3DConfig = Mask3DConfig()):
        super().__init__(cfg)
        self.backbone = Res16UNet34C(cfg.backbone)

    def forward(self, coords: torch.Tensor, feats: torch.Tensor, raw_xyz: torch.Tensor,
                point2segment: list[torch.Tensor] | None = None, is_eval: bool | None = None) -> dict:
        """Raw Mask3D outputs for voxelised input.

        Args:
            coords: (V, 3) int voxel coordinates of one cloud, or (V, 4) ``[b, x, y, z]``
                grouped by batch.
            feats: (V, in_channels) input features (:func:`point_inputs`: normalised colours, or ones).
            raw_xyz: (V, 3) float metres of each voxel (its first point).
            point2segment: per batch item (V_b,) int64 segment ids, or None.
            is_eval: attend to all voxels (default: ``not self.training``).

        Returns the dict of :meth:`QueryDecoder.decode`.
        """
        if raw_xyz.shape != (coords.shape[0], 3):
            raise ValueError(f"raw_xyz must be ({coords.shape[0]}, 3), got {tuple(raw_xyz.shape)}")
        x = SparseTensor.from_coords(coords, feats)
        pcd, maps = self.backbone(x)
        return self.decode(x, pcd, maps, raw_xyz, point2segment,
                           is_eval=(not self.training) if is_eval is None else is_eval)

    def predict(self, xyz, rgb, point_features: str = "backbone",
                post: PostprocessConfig = PostprocessConfig(use_dbscan=False)) -> Proposals:
        """Class-agnostic proposals for one cloud (FOLK's use of Mask3D).

        Args:
            xyz: (N, 3) metres (numpy or torch).
            rgb: (N, 3) uint8, or float in [0, 1].
            point_features: ``"backbone"`` (D = planes[7], 96) or ``"mask"`` (D = hidden_dim, 128).
            post: NMS IoU, optional DBSCAN split, score floor.

        Runs under ``torch.inference_mode`` on the model's device. Raises
        :class:`CloudTooSmallError` for a cloud inside one coarsest-level cell (:func:`check_extent`).
        """
        return self.predict_many(xyz, rgb, [post], point_features)[0]

    def predict_many(self, xyz, rgb, posts: Sequence[PostprocessConfig],
                     point_features: str = "backbone") -> list[Proposals]:
        """:meth:`predict` under several post-processing settings, the network run once."""
        if point_features not in ("backbone", "mask"):
            raise ValueError(f"point_features must be 'backbone' or 'mask', got {point_features!r}")
        xyz_np = np.asarray(xyz.detach().cpu() if torch.is_tensor(xyz) else xyz, dtype=np.float32)
        rgb_np = np.asarray(rgb.detach().cpu() if torch.is_tensor(rgb) else rgb)
        if rgb_np.shape != xyz_np.shape:
            raise ValueError(f"rgb must have the shape of xyz {xyz_np.shape}, got {rgb_np.shape}")
        vox = voxelize(xyz_np, self.cfg.voxel_size)
        check_extent(vox.coords, self.cfg.voxel_size)
        inputs = point_inputs(to_uint8_colors(rgb_np), self.cfg)
        dev = next(self.parameters()).device
        with torch.inference_mode():
            was_training = self.training
            self.eval()
            try:
                out = self(torch.from_numpy(vox.coords).to(dev),
                           torch.from_numpy(inputs[vox.unique_map]).to(dev),
                           torch.from_numpy(xyz_np[vox.unique_map]).to(dev))
            finally:
                self.train(was_training)
            inverse = torch.from_numpy(vox.inverse_map).to(dev)
            feats = out["backbone_features"] if point_features == "backbone" else out["mask_features"]
            feats = feats.float()
            voxel_xyz = torch.from_numpy(xyz_np[vox.unique_map]).to(dev)
            if dev.type == "cuda":   # the network's kernels are not the post-processing's time
                torch.cuda.synchronize(dev)
            proposals = []
            for post in posts:
                t0 = time.perf_counter()
                masks, scores = class_agnostic_proposals(out["pred_logits"][0], out["pred_masks"][0], inverse,
                                                         voxel_xyz, post)
                proposals.append(Proposals(masks, scores, feats, inverse, (time.perf_counter() - t0) * 1e3))
            return proposals
