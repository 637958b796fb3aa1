"""Mask3D configuration: frozen dataclasses, defaults = official ScanNet200 model.

Defaults follow JonasSchult/Mask3D ``scripts/scannet200/scannet200_val.sh``
(resolved in ../shared/data/mask3d_scannet200_state_dict.json,
``model_config_resolved``).  :func:`preset` returns ``"scannet200"`` (the
official model, 39.66 M parameters) or ``"small"`` (for CPU training).
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass, field, replace


INPUT_FEATURES = ("xyzrgb", "xyz")   # what a Mask3D reads per point besides its voxel: colour, or nothing


@dataclass(frozen=True)
class BackboneConfig:
    """Res16UNet34C (MinkUNet) backbone."""

    in_channels: int = 3                       # normalised RGB
    out_channels: int = 200                    # unused `final` 1x1 conv (kept for checkpoint keys)
    planes: tuple[int, ...] = (32, 64, 128, 256, 256, 128, 96, 96)
    layers: tuple[int, ...] = (2, 3, 4, 6, 2, 2, 2, 2)   # BasicBlocks per stage
    init_dim: int = 32                         # conv0p1s1 output channels
    conv1_kernel_size: int = 5                 # stem kernel (125 offsets)
    bn_momentum: float = 0.02                  # stem/transition/downsample BatchNorms
    block_bn_momentum: float = 0.1             # norm1/norm2 inside blocks (official default, not passed on)


@dataclass(frozen=True)
class Mask3DConfig:
    """Mask3D query decoder + heads; ``backbone`` nested."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    hidden_dim: int = 128                      # query / mask-feature width
    dim_feedforward: int = 1024
    num_queries: int = 150                     # FPS-sampled non-parametric queries
    num_heads: int = 8
    num_decoders: int = 3                      # passes over hlevels
    dropout: float = 0.0
    pre_norm: bool = False
    hlevels: tuple[int, ...] = (0, 1, 2, 3)    # feature maps 0..3 = strides 16, 8, 4, 2
    sample_sizes: tuple[int, ...] = (200, 800, 3200, 12800, 51200)  # keys per level in training
    shared_decoder: bool = True
    num_classes: int = 201                     # 200 ScanNet200 classes + no-object
    train_on_segments: bool = True             # masks over segments when point2segment is given
    voxel_size: float = 0.02                   # metres
    gauss_scale: float = 1.0                   # Fourier posenc B ~ N(0, gauss_scale^2)
    normalize_pos_enc: bool = True
    color_mean: tuple[float, float, float] = (0.47793125906962, 0.4303257521323044, 0.3749598901421883)
    color_std: tuple[float, float, float] = (0.2834475483823543, 0.27566157565723015, 0.27018971370874995)
    input_features: str = "xyzrgb"             # "xyz": geometry only, colours never read (LiDAR clouds)

    def __post_init__(self) -> None:
        if self.input_features not in INPUT_FEATURES:
            raise ValueError(f"input_features must be one of {INPUT_FEATURES}, got {self.input_features!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Mask3DConfig":
        """Inverse of :meth:`to_dict` (lists become tuples); unknown keys raise ValueError."""
        d = dict(d)
        bb = dict(d.pop("backbone", {}))
        known = set(Mask3DConfig.__dataclass_fields__)
        bad = set(d) - known | set(bb) - set(BackboneConfig.__dataclass_fields__)
        if bad:
            raise ValueError(f"unknown Mask3D config fields: {sorted(bad)}")
        tup = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
        return Mask3DConfig(backbone=BackboneConfig(**{k: tup(v) for k, v in bb.items()}),
                            **{k: tup(v) for k, v in d.items()})


@dataclass(frozen=True)
class PostprocessConfig:
    """Mask3D ``eval_instance_step`` settings (ScanNet200 val) and FOLK's class-agnostic NMS."""

    topk_per_image: int = 750                  # over queries x classes
    use_dbscan: bool = True
    dbscan_eps: float = 0.95                   # metres
    dbscan_min_points: int = 1
    nms_iou: float = 0.9                       # class-agnostic mask NMS (FOLK)
    min_score: float = 0.0                     # class-agnostic: drop proposals at or below
    min_points: int = 1                        # class-agnostic: drop proposals with fewer points (before NMS)
    mask_threshold: float = 0.5                # class-agnostic: mask = sigmoid(logit) > this (0.5: logit > 0)

    @property
    def mask_logit_threshold(self) -> float:
        """``mask_threshold`` as a logit: 0.0 at Mask3D's 0.5."""
        return math.log(self.mask_threshold / (1.0 - self.mask_threshold))

    @staticmethod
    def class_agnostic(dbscan_eps: float = 0.0, nms_iou: float = 0.9, min_points: int = 1,
                       mask_threshold: float = 0.5) -> "PostprocessConfig":
        """FOLK's proposal settings: masks where the query's mask probability exceeds ``mask_threshold``
        (Mask3D: 0.5), DBSCAN split at ``dbscan_eps`` metres (0: no split), proposals under
        ``min_points`` points dropped (the split's small fragments), NMS at ``nms_iou``."""
        if not dbscan_eps >= 0:
            raise ValueError(f"dbscan_eps must be >= 0 (0: no split), got {dbscan_eps}")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be a probability in (0, 1), got {mask_threshold}")
        if not 0.0 <= nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {nms_iou}")
        split = dbscan_eps > 0
        return PostprocessConfig(use_dbscan=split, dbscan_eps=dbscan_eps if split else 0.95, nms_iou=nms_iou,
                                 min_points=min_points, mask_threshold=mask_threshold)


PRESETS = ("scannet200", "small")


def preset(name: str) -> Mask3DConfig:
    """``"scannet200"``: the official model; ``"small"``: ~1/10 width for CPU training."""
    if name == "scannet200":
        return Mask3DConfig()
    if name == "small":
        return replace(
            Mask3DConfig(),
            backbone=BackboneConfig(planes=(16, 32, 64, 128, 128, 64, 48, 48), layers=(1,) * 8,
                                    init_dim=16, conv1_kernel_size=3, out_channels=2),
            hidden_dim=64, dim_feedforward=256, num_queries=40, num_heads=4, num_decoders=2,
            num_classes=2, train_on_segments=False)
    raise ValueError(f"unknown Mask3D preset {name!r}; known: {PRESETS}")
