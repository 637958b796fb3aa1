"""The Segmenter's settings, declared once: what the bundle stores whole in its manifest
(:mod:`folk_ros.core.bundle`), what ``Segmenter.from_bundle`` reads back, what ``training.make_bundle`` writes
and what the node's parameter table takes its defaults from (:mod:`folk_ros.ros.parameters`).

The proposal fields (``mask_threshold``, ``dbscan_eps``, ``nms_iou``, ``min_points``) are Mask3D's class-agnostic
post-processing, nested as one :class:`folk_ros.core.mask3d.config.PostprocessConfig` by
:meth:`SegmenterConfig.proposal_postprocess`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from folk_ros.core.clip import DEFAULT_TEMPLATE
from folk_ros.core.mask3d.config import PostprocessConfig


@dataclass(frozen=True)
class SegmenterConfig:
    """How the Segmenter turns proposals into labelled instances (and which proposals it keeps)."""

    prompt_template: str = DEFAULT_TEMPLATE      # CLIP text prompt; {} is the class name
    temperature: float = 0.07                    # tau of the label softmax (from distillation)
    score_threshold: float = 0.05                # drop instances whose confidence is below
    max_instances: int = 100                     # keep at most this many, best first
    min_points: int = 20                         # drop proposals with fewer points
    point_features: str = "backbone"             # Mask3D features the student pools: backbone | mask
    nms_iou: float = 0.9                         # class-agnostic mask NMS of the proposals (FOLK)
    dbscan_eps: float = 0.0                      # split proposals into parts further apart (m); 0 = no split
    mask_threshold: float = 0.5                  # proposal mask = Mask3D mask probability above this

    def __post_init__(self):
        if "{}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain '{{}}', got {self.prompt_template!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.max_instances < 1 or self.min_points < 1:
            raise ValueError("max_instances and min_points must be >= 1")
        if self.point_features not in ("backbone", "mask"):
            raise ValueError(f"point_features must be 'backbone' or 'mask', got {self.point_features!r}")
        self.proposal_postprocess()  # checks dbscan_eps and mask_threshold

    def proposal_postprocess(self) -> PostprocessConfig:
        """The Mask3D post-processing of the proposals: masks where the mask probability exceeds
        ``mask_threshold``, DBSCAN split (Mask3D's ``use_dbscan``, at ``dbscan_eps``; off at 0),
        proposals under ``min_points`` dropped, then class-agnostic mask NMS at ``nms_iou``."""
        return PostprocessConfig.class_agnostic(self.dbscan_eps, self.nms_iou, self.min_points, self.mask_threshold)

    def to_dict(self) -> dict:
        """Every field, as the manifest stores it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data) -> "SegmenterConfig":
        """The config a manifest stored; ValueError naming the field that is unknown, mistyped or out of range
        (fields it does not hold keep their defaults)."""
        if not isinstance(data, dict):
            raise ValueError(f"must be an object, got {type(data).__name__}")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise ValueError(f"has unknown fields {unknown}")
        for name, value in data.items():
            number = types[name] in ("float", "int")
            if number and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"field {name!r} must be a number, got {type(value).__name__} {value!r}")
            if types[name] == "str" and not isinstance(value, str):
                raise ValueError(f"field {name!r} must be a string, got {type(value).__name__} {value!r}")
            if types[name] == "int" and isinstance(value, float):
                raise ValueError(f"field {name!r} must be an integer, got {value!r}")
        return cls(**data)
