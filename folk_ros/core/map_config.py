"""MapConfig: the live object map's settings, each declared once with its default, help and limits (the
node's ``map_*`` parameters are derived from these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np


def _setting(default, help: str, limits: tuple = ()):
    """A MapConfig field: its default, one line of help and (low, high) limits, declared once
    (the node's parameter table is derived from them)."""
    return field(default=default, metadata={"help": help, "limits": limits})


@dataclass(frozen=True)
class MapConfig:
    """Settings of the live object map (voxels in metres; shares in [0, 1], cosines in [-1, 1]).

    The cosine gates were chosen on 4 held-out synthetic walk-throughs (seed 900, scenes 20-23; 8 fused
    clouds each) with models/folk-synth, by the final map's AP50 and its id consistency: min_cosine /
    merge_cosine 0.5 / 0.9 gave AP50 0.354 and id consistency 0.967, 0.7 / 0.95 gave 0.373 and 0.977,
    0.9 / 0.9 gave 0.372 and 0.955 (``bench/bench_live_map.py`` measures the chosen ones on other scenes).
    """

    voxel_size: float = _setting(0.05, "Edge (m) of the map's voxels: instance voxel sets, change detection "
                                       "and per-point lookup.", (0.005, 1.0))
    margin: float = _setting(1.0, "Changed voxels are grown by this margin (m) before segmenting, so objects at "
                                  "the border are seen whole; also the cell size of re-observed regions.",
                             (0.1, 10.0))
    full_pass_fraction: float = _setting(0.6, "Segment the whole cloud when the changed region holds more than "
                                              "this share of its points.", (0.0, 1.0))
    match_iou: float = _setting(0.2, "A new instance continues a map instance when their voxel IoU reaches this "
                                     "(one Hungarian assignment per cloud).", (0.0, 1.0))
    min_cosine: float = _setting(0.7, "Associations and relocations also need this embedding cosine.", (-1.0, 1.0))
    merge_overlap: float = _setting(0.6, "Merge two map instances (the older id survives) when this share of "
                                         "the smaller one's voxels lies in the other.", (0.0, 1.0))
    merge_cosine: float = _setting(0.95, "Merges, and a second proposal joining an object matched in the same "
                                         "cloud, need this embedding cosine.", (-1.0, 1.0))
    miss_limit: int = _setting(2, "Remove an instance after this many updates in a row re-observed its region "
                                  "without finding it; 0 = never remove.", (0, 1000))
    reobserved_fraction: float = _setting(0.8, "An update re-observes an instance when this share of its voxels "
                                               "lies in the update's region.", (0.0, 1.0))
    relocate_distance: float = _setting(0.0, "A new instance within this distance (m) of one that vanished in the "
                                             "same update keeps its id (a moved object); 0 = moved objects get a "
                                             "new id.", (0.0, 100.0))
    min_voxels: int = _setting(3, "Ignore observations with fewer voxels.", (1, 100000))

    def __post_init__(self):
        for f in fields(self):
            value, limits = getattr(self, f.name), f.metadata["limits"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"map {f.name} must be a finite number, got {value!r}")
            if limits and not limits[0] <= value <= limits[1]:
                raise ValueError(f"map {f.name} must lie in [{limits[0]}, {limits[1]}], got {value}")
        if self.margin < self.voxel_size:
            raise ValueError(f"map margin ({self.margin} m) must be at least the voxel size ({self.voxel_size} m)")

    @classmethod
    def from_dict(cls, values: dict) -> "MapConfig":
        """From a dict (e.g. a saved map's header); unknown keys are an error naming them."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown map settings {unknown}")
        return cls(**values)
