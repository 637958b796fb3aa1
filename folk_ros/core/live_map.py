"""LiveMap: the Segmenter run incrementally over a growing map, feeding an InstanceMap (no ROS imports).

::

    cloud ─► ChangeDetector (changed voxels + margin) ─► crop ─► Segmenter.embed ─► InstanceMap.update
                                                                                        │
    label(vocabulary) / query(phrases): one matmul over the fused embeddings  ◄─────────┘

Per cloud only the changed region is segmented (:mod:`folk_ros.core.change_detection`); proposals of
the crop that do not touch its changed core are left out (they are old objects, possibly cut by the
crop's border), and the map's instances outside the region are untouched. The cost of an update is
the segmentation of what changed plus a few linear passes over the cloud's points (voxel keys, the
change test), not a segmentation of the whole map.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from folk_ros.core.change_detection import Change, ChangeDetector
from folk_ros.core.cloud import PointCloud, fit_point_budget
from folk_ros.core.instance_map import InstanceMap, MapLabels, Region, UpdateResult
from folk_ros.core.map_config import MapConfig
from folk_ros.core.map_file import load_map, save_map
from folk_ros.core.map_voxels import isin_sorted
from folk_ros.core.segmenter import EmbeddedProposals, Segmenter
from folk_ros.core.vocabulary import validate_vocabulary
from folk_ros.core.voxel_masks import expand_segments

QUERY_TEMPLATE = "{}"   # query phrases are encoded as written ("a red mug"), not through the prompt template


@dataclass
class MapUpdate:
    """What one :meth:`LiveMap.update` did.

    Attributes:
        kind: the change kind ("first", "grown", "scan", "unchanged"; :class:`Change`), or "discarded" (the
            map was reset while the cloud was segmented).
        full: the whole cloud was segmented.
        points, segmented_points: points of the cloud, and of the crop that went through the Segmenter
            (after ``max_points`` downsampling).
        changed_voxels, voxels: changed and occupied voxels of the cloud.
        out_of_range: points beyond the map grid's key range (left out).
        result: the InstanceMap's :class:`UpdateResult` (None when nothing was segmented).
        timings: milliseconds per stage (change, proposals, student, associate, total).
    """

    kind: str
    full: bool
    points: int
    segmented_points: int
    changed_voxels: int
    voxels: int
    out_of_range: int
    result: UpdateResult | None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class PreparedUpdate:
    """The result of :meth:`LiveMap.prepare`, waiting for :meth:`LiveMap.commit`."""

    change: Change
    report: MapUpdate
    generation: int                         # the LiveMap's reset count when prepared
    crop: PointCloud | None = None          # the segmented crop (None: nothing changed)
    embedded: EmbeddedProposals | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class QueryHit:
    """One ranked answer of :meth:`LiveMap.query`: the instance's map row and id, its score for the phrase it
    matched best, and that phrase."""

    row: int
    instance_id: int
    score: float
    phrase: str


class LiveMap:
    """The live object map over a :class:`Segmenter` (see the module docstring).

    Args:
        segmenter: proposals and embeddings; its ``cfg.score_threshold`` also drops proposals whose
            Mask3D score is below it before they reach the map.
        cfg: map settings.
        max_points, voxel_size: the crop is voxel-downsampled to at most ``max_points`` before Mask3D
            (:func:`fit_point_budget`, as the per-cloud node does).
    """

    def __init__(self, segmenter: Segmenter, cfg: MapConfig = MapConfig(), max_points: int = 200_000,
                 voxel_size: float = 0.02):
        self.segmenter = segmenter
        self.cfg = cfg
        self.max_points = int(max_points)
        self.voxel_size = float(voxel_size)
        self.map = InstanceMap(segmenter.text.embed_dim, cfg, segmenter.embedding_space)
        self._detector: ChangeDetector | None = None
        self._last_keys: tuple | None = None   # (xyz, keys, inside) of the last cloud
        self._generation = 0                   # counts resets: a prepared update from before one is dropped

    # ------------------------------------------------------------------ updates

    def update(self, cloud: PointCloud, stamp: float) -> MapUpdate:
        """Segment what changed in ``cloud`` (map frame) and fold it into the map: :meth:`prepare`, then
        :meth:`commit`.

        Raises what the Segmenter raises (e.g. CloudTooSmallError for a crop too small for Mask3D); the
        change is then not committed, so the next cloud's change still holds it.
        """
        return self.commit(self.prepare(cloud), stamp)

    def prepare(self, cloud: PointCloud) -> PreparedUpdate:
        """The slow half of an update: what changed, and the Segmenter on the crop. It reads the map's grid
        but changes nothing a reader of the map sees, so a caller may run it without the lock that
        guards the map (the node does: queries are not held up by Mask3D)."""
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        grid = self.map.ensure_grid(cloud.xyz)
        if self._detector is None:
            self._detector = ChangeDetector(grid, self.cfg.margin, self.cfg.full_pass_fraction)
        keys, inside = self._keys(cloud.xyz)
        change = self._detector.detect(cloud.xyz, keys, inside)
        timings["change"] = (time.perf_counter() - t_start) * 1e3
        report = MapUpdate(kind=change.kind, full=change.full, points=len(cloud), segmented_points=0,
                           changed_voxels=change.changed_voxels, voxels=change.voxels,
                           out_of_range=int(len(cloud) - inside.sum()), result=None, timings=timings)
        prepared = PreparedUpdate(change, report, self._generation)
        if change.crop.any():
            prepared.crop, _, _ = fit_point_budget(cloud.select(change.crop), self.max_points, self.voxel_size)
            report.segmented_points = len(prepared.crop)
            prepared.embedded = self.segmenter.embed(prepared.crop)
            timings.update(prepared.embedded.timings)
        prepared.seconds = time.perf_counter() - t_start
        return prepared

    def commit(self, prepared: PreparedUpdate, stamp: float) -> MapUpdate:
        """The quick half of an update: fold the prepared observations into the map (the association) and
        remember the cloud for the next change test. A prepared update from before a :meth:`reset` is
        dropped (kind "discarded"): the next cloud is then segmented whole."""
        t0 = time.perf_counter()
        report, change, timings = prepared.report, prepared.change, prepared.report.timings
        if prepared.generation != self._generation:
            report.kind = "discarded"
        elif prepared.embedded is not None:
            emb = prepared.embedded
            keep = self._observations(prepared.crop, emb.masks, emb.proposal_scores, change)
            report.result = self.map.update(prepared.crop.xyz, emb.masks[keep], emb.embeddings[keep],
                                            emb.proposal_scores[keep], stamp,
                                            region=Region(change.cell_size, change.core))
            self._detector.commit(change)
            timings["associate"] = (time.perf_counter() - t0) * 1e3
        else:
            self._detector.commit(change)
        timings["total"] = prepared.seconds * 1e3 + (time.perf_counter() - t0) * 1e3
        return report

    def _observations(self, crop: PointCloud, masks: np.ndarray, scores: np.ndarray, change: Change) -> np.ndarray:
        """(M,) bool proposals that go into the map: score at least the Segmenter's score_threshold, and
        (unless the whole cloud was segmented) touching the changed core."""
        keep = scores >= self.segmenter.cfg.score_threshold
        if not change.full and len(masks):
            cells = self.map.grid.keys(crop.xyz, change.cell_size)[0]
            keep &= (masks & isin_sorted(cells, change.core)[None, :]).any(axis=1)
        return keep

    def reset(self) -> None:
        """An empty map (ids keep counting up); the next cloud is segmented whole."""
        self.map.reset()
        self._generation += 1
        if self._detector is not None:
            self._detector.reset()

    # ------------------------------------------------------------------ reading

    def label(self, vocabulary: Sequence[str], template: str | None = None) -> MapLabels:
        """Every instance's label and confidence for ``vocabulary`` from its fused embedding (one matmul;
        the text is encoded once per vocabulary and cached). ``template``: default the Segmenter's."""
        return self.map.label(self.vocabulary_text(vocabulary, template), self.segmenter.cfg.temperature)

    def vocabulary_text(self, vocabulary: Sequence[str], template: str | None = None) -> np.ndarray:
        """(K, C) unit CLIP text embeddings of ``vocabulary`` in ``template`` (default the Segmenter's);
        read from the text store or encoded once (:class:`~folk_ros.core.text_encoder.TextEncoder`)."""
        names = validate_vocabulary(vocabulary)
        return self.segmenter.text.encode(names, template or self.segmenter.cfg.prompt_template).numpy()

    def encode_phrases(self, phrases: Sequence[str]) -> np.ndarray:
        """(P, C) unit CLIP text embeddings of free-text phrases, encoded as written."""
        if isinstance(phrases, str) or not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
            raise ValueError(f"phrases must be a non-empty list of non-empty strings, got {phrases!r}")
        return self.segmenter.text.encode(list(phrases), QUERY_TEMPLATE, keep=False).numpy()

    def query(self, phrases: Sequence[str], k: int, min_score: float = 0.0,
              vocabulary: Sequence[str] | None = None, template: str | None = None) -> list[QueryHit]:
        """The instances that best match free-text ``phrases``, at most ``k``, best first
        (:meth:`InstanceMap.query`; ``vocabulary``, encoded with ``template``, default the Segmenter's, is
        what the phrases compete with: None = plain cosine)."""
        names = list(phrases)
        reference = None if vocabulary is None else self.vocabulary_text(vocabulary, template)
        rows, scores, phrase = self.map.query(self.encode_phrases(names), k, min_score, reference,
                                              self.segmenter.cfg.temperature)
        return [QueryHit(int(r), int(self.map.ids[r]), float(s), names[p]) for r, s, p in zip(rows, scores, phrase)]

    def _keys(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The map-grid voxel keys and in-range mask of ``xyz``; those of the last cloud are kept, so the
        per-point lookups after an update do not compute them again."""
        if self._last_keys is None or self._last_keys[0] is not xyz:
            self._last_keys = (xyz, *self.map.ensure_grid(xyz).keys(xyz))
        return self._last_keys[1], self._last_keys[2]

    def point_instances(self, xyz: np.ndarray) -> np.ndarray:
        """(N,) int64 map row of the instance holding each point (-1: none), by voxel."""
        if self.map.grid is None or len(self.map) == 0:
            return np.full(len(xyz), -1, np.int64)
        keys, inside = self._keys(xyz)
        rows = self.map.point_rows(keys)
        rows[~inside] = -1
        return rows

    def instance_points(self, xyz: np.ndarray, rows: np.ndarray,
                        point_instances: np.ndarray | None = None) -> list[np.ndarray]:
        """Per map row in ``rows``, the (K_i,) int64 indices of the points of ``xyz`` inside its voxels
        (instances may share voxels, so a point may belong to several). One sort of the keys of the points
        that lie in some instance's voxel, not of the whole cloud. ``point_instances``: this cloud's
        :meth:`point_instances`, when the caller has it already."""
        rows = np.asarray(rows, np.int64)
        if self.map.grid is None or rows.size == 0:
            return [np.zeros(0, np.int64) for _ in rows]
        keys, _ = self._keys(xyz)
        if point_instances is None:
            point_instances = self.point_instances(xyz)
        order = np.flatnonzero(point_instances >= 0)
        order = order[np.argsort(keys[order], kind="stable")]          # points in objects, grouped by voxel
        sorted_keys = keys[order]
        voxel_keys, starts = np.unique(sorted_keys, return_index=True)
        ends = np.append(starts[1:], sorted_keys.size)
        out = []
        for r in rows:                                                   # M instances, not points
            vox = self.map.voxels[r]
            pos = np.searchsorted(voxel_keys, vox)
            pos = pos[(pos < voxel_keys.size) & (voxel_keys[np.minimum(pos, max(voxel_keys.size - 1, 0))] == vox)]
            counts = ends[pos] - starts[pos]
            out.append(np.sort(order[expand_segments(starts[pos], counts)]))
        return out

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> Path:
        """Write the map atomically (:meth:`InstanceMap.save`)."""
        return save_map(self.map, path)

    def load(self, path: str | os.PathLike) -> None:
        """Replace the map by a saved one made with this student (MapFileError otherwise); the next cloud
        is compared with nothing, so it is segmented whole."""
        self.map = load_map(path, embedding_space=self.map.embedding_space, cfg=self.cfg)
        self._detector = None
        self._last_keys = None
        self._generation += 1
