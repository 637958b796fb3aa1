"""Map mode: what the node publishes of the live object map, and the checks of its service requests.

Pure functions over a :class:`MapView`, a copy of the map's published state taken under the node's map
lock, so messages are built while the worker goes on; tested without spinning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from folk_ros_interfaces.msg import InstanceArray
from std_msgs.msg import Header

from folk_ros.core.geometry import OrientedBoxes
from folk_ros.core.instance_map import MapLabels
from folk_ros.core.live_map import LiveMap
from folk_ros.core.pointcloud2 import CloudConversion
from folk_ros.ros import parameters as params
from folk_ros.ros.cloud_outputs import Outputs, labeled_cloud_msg
from folk_ros.ros.conversions import instances_to_msg, label_colors
from folk_ros.ros.markers import markers_from_instances

MAX_QUERY_PHRASES = 64      # phrases per query request
MAX_PHRASE_CHARS = 300      # characters per phrase (CLIP reads 77 tokens; longer text is noise)
MAX_QUERY_RESULTS = 10_000


@dataclass(frozen=True)
class MapView:
    """Map instances as published (e.g. those with confidence at least score_threshold, ordered by id).

    Attributes:
        vocabulary: the names label_indices index.
        ids, label_indices, observations: (M,) int64; scores, first_seen, last_seen: (M,) float;
        box_min, box_max, centroids: (M, 3) float64. obb: the M gravity-aligned oriented boxes.
        point_rows: (K,) int64 row (into these M) of each kept point of the last cloud, -1 for none (one
            instance per point: where instances share a voxel, the most observed).
        point_sets: M arrays of the kept points inside each instance's voxels (may overlap).
    """

    vocabulary: tuple[str, ...]
    ids: np.ndarray
    label_indices: np.ndarray
    scores: np.ndarray
    observations: np.ndarray
    first_seen: np.ndarray
    last_seen: np.ndarray
    box_min: np.ndarray
    box_max: np.ndarray
    centroids: np.ndarray
    obb: OrientedBoxes
    point_rows: np.ndarray
    point_sets: list[np.ndarray]

    def __len__(self) -> int:
        return int(self.ids.size)

    def shifted(self, offset) -> "MapView":
        """The same view with its geometry moved by ``offset`` (3,) metres."""
        offset = np.asarray(offset, np.float64)
        if not offset.any():
            return self
        return replace(self, box_min=self.box_min + offset, box_max=self.box_max + offset,
                       centroids=self.centroids + offset, obb=self.obb.shifted(offset))


def shown_rows(live_map: LiveMap, labels: MapLabels, score_threshold: float) -> np.ndarray:
    """Map rows whose confidence reaches ``score_threshold``, ordered by id."""
    rows = np.flatnonzero(labels.scores >= score_threshold)
    return rows[np.argsort(live_map.map.ids[rows], kind="stable")]


def map_view(live_map: LiveMap, labels: MapLabels, vocabulary: tuple[str, ...], rows: np.ndarray,
             xyz: np.ndarray | None = None) -> MapView:
    """Copy map ``rows`` of ``live_map`` in that order (call under the map lock); with ``xyz``, the (K, 3)
    kept points of the last cloud, also which points each instance holds."""
    imap = live_map.map
    if xyz is None:
        point_rows, point_sets = np.zeros(0, np.int64), [np.zeros(0, np.int64) for _ in rows]
    else:
        new_row = np.full(len(imap) + 1, -1, np.int64)            # the last entry serves row -1
        new_row[rows] = np.arange(rows.size)
        point_instances = live_map.point_instances(xyz)
        point_rows = new_row[point_instances]
        point_sets = live_map.instance_points(xyz, rows, point_instances)
    return MapView(vocabulary=tuple(vocabulary), ids=imap.ids[rows].copy(), label_indices=labels.label_indices[rows],
                   scores=labels.scores[rows], observations=imap.observations[rows].copy(),
                   first_seen=imap.first_seen[rows].copy(), last_seen=imap.last_seen[rows].copy(),
                   box_min=imap.box_min[rows].copy(), box_max=imap.box_max[rows].copy(),
                   centroids=imap.centroids[rows].copy(),
                   obb=OrientedBoxes(imap.obb_center[rows], imap.obb_size[rows], imap.obb_yaw[rows]),
                   point_rows=point_rows, point_sets=point_sets)


def instances_msg(header: Header, view: MapView, point_indices: list[np.ndarray] | None = None) -> InstanceArray:
    """The InstanceArray of ``view`` (stable ids, observations, first and last seen); ``point_indices``
    in the input message's point order, None = empty lists."""
    point_indices = point_indices if point_indices is not None else [np.zeros(0, np.int64)] * len(view)
    return instances_to_msg(header, view.vocabulary, point_indices, view.label_indices, view.scores,
                            view.centroids, view.box_min, view.box_max, ids=view.ids,
                            observations=view.observations, first_seen=view.first_seen, last_seen=view.last_seen,
                            obb=view.obb)


def build_map_outputs(header: Header, conv: CloudConversion, n_input: int, view: MapView,
                      settings: params.NodeSettings, previous_ids: set[int]) -> Outputs:
    """The three outputs in map mode: ``instances`` holds the whole shown map (stable ids; point_indices: the
    points of this cloud inside each instance's voxels), ``markers`` replace each id's markers in place and
    delete the ids gone since ``previous_ids``, and ``labeled_cloud`` labels the points of this cloud with
    one instance each (instance_id = stable id)."""
    view = view.shifted(conv.origin)          # map coordinates -> the input's frame (recentred UTM maps)
    inst_msg = instances_msg(header, view, [conv.indices[g] for g in view.point_sets])
    names = [view.vocabulary[i] for i in view.label_indices]
    point_sets = [conv.cloud.xyz[g] + conv.origin for g in view.point_sets] if settings.marker_points else None
    gone = sorted(previous_ids - {int(i) for i in view.ids})
    markers = markers_from_instances(header, names, view.scores, view.box_min, view.box_max,
                                     label_colors(view.label_indices), lifetime_s=settings.marker_lifetime,
                                     point_sets=point_sets, ids=view.ids, delete_ids=gone, obb=view.obb)
    labeled = None
    if settings.publish_labeled_cloud:
        hit = view.point_rows >= 0
        rows = np.where(hit, view.point_rows, 0)
        take = (lambda a, empty: np.where(hit, a[rows], empty)) if len(view) else \
            (lambda a, empty: np.full(len(rows), empty))
        labeled = labeled_cloud_msg(header, conv, n_input, take(view.ids, -1).astype(np.int32),
                                    take(view.label_indices, -1).astype(np.int32),
                                    take(view.scores, 0.0).astype(np.float32))
    return Outputs(instances=inst_msg, markers=markers, labeled_cloud=labeled)


def query_problem(phrases, max_results: int, min_score: float) -> str | None:
    """Why a query request is refused (one line), or None."""
    phrases = list(phrases)
    if not phrases:
        return "phrases is empty: give at least one phrase, e.g. ['a fire extinguisher']"
    if len(phrases) > MAX_QUERY_PHRASES:
        return f"{len(phrases)} phrases: at most {MAX_QUERY_PHRASES} per request"
    if any(not p.strip() for p in phrases):
        return "phrases must be non-empty strings"
    long = [p for p in phrases if len(p) > MAX_PHRASE_CHARS]
    if long:
        return f"a phrase of {len(long[0])} characters: at most {MAX_PHRASE_CHARS}"
    if not 1 <= max_results <= MAX_QUERY_RESULTS:
        return f"max_results must be in [1, {MAX_QUERY_RESULTS}], got {max_results}"
    if not (math.isfinite(min_score) and 0.0 <= min_score <= 1.0):
        return f"min_score must be in [0, 1], got {min_score}"
    return None


def save_path(map_dir: Path, file_name: str) -> Path:
    """``map_dir / file_name`` for a plain file name; ValueError with the reason otherwise (any peer on the
    DDS domain can call save_map, so nothing may be written outside map_dir)."""
    if not params.is_plain_file_name(file_name):
        raise ValueError(f"file name {file_name!r} refused: give a plain file name (no path separators, no '..', "
                         f"not absolute); it is written inside map_dir {map_dir}")
    path = map_dir / file_name
    if path.parent != map_dir:   # belt and braces after the name check
        raise ValueError(f"file name {file_name!r} leaves map_dir {map_dir}")
    return path
