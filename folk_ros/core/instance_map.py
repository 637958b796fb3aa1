"""InstanceMap: the live object map, objects with stable ids fused over many clouds (no ROS imports).

Each map instance holds a stable integer id (never reused in a session), its voxel set in the map
frame (sorted int64 keys, :mod:`folk_ros.core.map_voxels`), a fused embedding, observation count,
first and last seen stamps, and an axis-aligned box and centroid at voxel precision.

The fused embedding is the weighted sum of the unit student embeddings (paper Eq. 7) of every
observation, weight = points x proposal score; it is normalised when read, so labelling the whole
map for a new vocabulary (:meth:`InstanceMap.label`, the paper's inference rule on fused embeddings)
and answering a text query (:meth:`InstanceMap.query`) are one matmul each.

:meth:`InstanceMap.update` folds the instances of one cloud in (the association rule is in its
docstring); :meth:`state` / :meth:`from_state` give it as plain arrays, which
:mod:`folk_ros.core.map_file` keeps in a versioned safetensors file. Settings: :mod:`folk_ros.core.map_config`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from folk_ros.core.geometry import grouped_oriented_boxes
from folk_ros.core.map_config import MapConfig
from folk_ros.core.map_voxels import (MAX_CELL, VoxelGrid, concat_sets, isin_sorted, neighbourhood,
                                      overlap_counts, unpack)
from folk_ros.core.student import classify

DUPLICATE_TEXT_COSINE = 0.95   # a query phrase and a vocabulary name this close in CLIP text space mean the same


@dataclass(frozen=True)
class Region:
    """The part of the map frame an update re-observed: sorted int64 keys of ``cell_size`` cells of the
    map grid (:meth:`VoxelGrid.keys` at ``cell_size``)."""

    cell_size: float
    cells: np.ndarray


@dataclass
class UpdateResult:
    """What one :meth:`InstanceMap.update` did, in map ids.

    Attributes:
        observation_ids: (M,) int64 map id each input instance went to (-1: ignored, too few voxels).
        new, matched, relocated, removed: sorted map ids created, continued, moved and removed.
        merged: (surviving id, absorbed id) pairs.
    """

    observation_ids: np.ndarray
    new: list[int]
    matched: list[int]
    relocated: list[int]
    removed: list[int]
    merged: list[tuple[int, int]]


@dataclass(frozen=True)
class MapLabels:
    """Labels of every map instance (rows as :attr:`InstanceMap.ids`).

    Attributes:
        label_indices: (M,) int64 into the vocabulary. label_probs: (M,) softmax probability of it.
        scores: (M,) confidence = mean proposal score x label probability (as a per-cloud instance).
    """

    label_indices: np.ndarray
    label_probs: np.ndarray
    scores: np.ndarray


_ARRAYS = ("ids", "emb_sum", "weight", "score_sum", "points_sum", "observations", "first_seen", "last_seen",
           "misses")
_GEOMETRY = ("box_min", "box_max", "centroids", "obb_center", "obb_size", "obb_yaw")   # derived from the voxels


class InstanceMap:
    """Objects with stable ids, fused over clouds. Rows are parallel arrays; ``voxels[i]`` belongs to ``ids[i]``.

    Args:
        embedding_dim: size C of the student embeddings.
        cfg: the association settings.
        embedding_space: an identifier of the model that made the embeddings (e.g. a hash of the student's
            weights); a saved map only loads into a map of the same space.
    """

    def __init__(self, embedding_dim: int, cfg: MapConfig = MapConfig(), embedding_space: str = ""):
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.cfg = cfg
        self.embedding_dim = int(embedding_dim)
        self.embedding_space = str(embedding_space)
        self.grid: VoxelGrid | None = None
        # (3,) float64 metres: map coordinates + frame_origin = the clouds' frame (clouds far from their frame's
        # origin, e.g. UTM, are recentred before they reach the map); None until the first cloud
        self.frame_origin: np.ndarray | None = None
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget every instance; ids keep counting up (never reused in a session); the grid is kept."""
        self.next_id = getattr(self, "next_id", 0)
        self.ids = np.zeros(0, np.int64)
        self.voxels: list[np.ndarray] = []
        self.emb_sum = np.zeros((0, self.embedding_dim), np.float32)   # sum of weight x unit embedding
        self.weight = np.zeros(0, np.float64)                          # sum of weights
        self.score_sum = np.zeros(0, np.float64)                       # sum of points x proposal score
        self.points_sum = np.zeros(0, np.float64)                      # sum of points
        self.observations = np.zeros(0, np.int64)
        self.first_seen = np.zeros(0, np.float64)
        self.last_seen = np.zeros(0, np.float64)
        self.misses = np.zeros(0, np.int64)
        self.box_min = np.zeros((0, 3), np.float64)
        self.box_max = np.zeros((0, 3), np.float64)
        self.centroids = np.zeros((0, 3), np.float64)
        self.obb_center = np.zeros((0, 3), np.float64)    # gravity-aligned oriented boxes of the voxel centres
        self.obb_size = np.zeros((0, 3), np.float64)
        self.obb_yaw = np.zeros(0, np.float64)
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.ids.size)

    def ensure_grid(self, xyz: np.ndarray) -> VoxelGrid:
        """The map's voxel grid; the first call places it around ``xyz`` (kept for the session)."""
        if self.grid is None:
            self.grid = VoxelGrid.around(xyz, self.cfg.voxel_size)
        return self.grid

    def embeddings(self) -> np.ndarray:
        """(M, C) float32 unit-norm fused embeddings."""
        norm = np.linalg.norm(self.emb_sum, axis=1, keepdims=True)
        return self.emb_sum / np.maximum(norm, 1e-12)

    def proposal_scores(self) -> np.ndarray:
        """(M,) float32 point-weighted mean proposal score of each instance's observations."""
        return (self.score_sum / np.maximum(self.points_sum, 1e-12)).astype(np.float32)

    def voxel_counts(self) -> np.ndarray:
        return np.fromiter((v.size for v in self.voxels), np.int64, len(self.voxels))

    def row_of(self, instance_id: int) -> int:
        """The row of map id ``instance_id``; KeyError if it is not in the map."""
        rows = np.flatnonzero(self.ids == instance_id)
        if rows.size == 0:
            raise KeyError(f"no instance {instance_id} in the map")
        return int(rows[0])

    # ------------------------------------------------------------------ reading

    def label(self, text: np.ndarray, temperature: float) -> MapLabels:
        """Label every instance from its fused embedding by the Segmenter's rule (:func:`classify`).

        Args:
            text: (K, C) unit-norm text embeddings of the vocabulary (K >= 1).
            temperature: tau of the softmax (the student's).
        """
        text = self._checked_text(text)
        if len(self) == 0:
            empty = np.zeros(0, np.float32)
            return MapLabels(np.zeros(0, np.int64), empty, empty)
        probs, idx = classify(torch.from_numpy(self.embeddings()), torch.from_numpy(text), temperature)
        p = probs.numpy().astype(np.float32)
        return MapLabels(idx.numpy().astype(np.int64), p, self.proposal_scores() * p)

    def query(self, text: np.ndarray, k: int, min_score: float = 0.0, reference: np.ndarray | None = None,
              temperature: float = 0.07) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Instances ranked by how well they match free-text embeddings; an instance scores its best phrase.

        With ``reference`` (the current vocabulary's text embeddings) the score of phrase p is the label
        rule of :meth:`label` with p put into the vocabulary: ``softmax(emb @ [p, vocabulary].T / tau)[p]``
        times the proposal score, vocabulary names that mean the same as p (text cosine >=
        DUPLICATE_TEXT_COSINE) left out; so an object ranks high when it is more like p than like anything
        else the robot knows, and scores lie in [0, 1]. Without ``reference`` it is the plain cosine.
        Measured on held-out synthetic walk-throughs, the first is the better ranking (bench_live_map).

        Args:
            text: (P, C) unit-norm embeddings of the query phrases.
            k: at most this many results (>= 1).
            min_score: drop results whose score is below.
            reference: optional (K, C) unit-norm text embeddings of the vocabulary.
            temperature: tau of the softmax (the student's).

        Returns:
            rows (R,) int64 into the map arrays, scores (R,) float32 (descending), phrase (R,) int64 index of
            the phrase each result matched best.
        """
        text = self._checked_text(text)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(self) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        emb = self.embeddings()
        sim = emb @ text.T                                                      # (M, P)
        if reference is not None:
            reference = self._checked_text(reference)
            ref_sim = emb @ reference.T / np.float32(temperature)               # (M, K)
            same = text @ reference.T >= DUPLICATE_TEXT_COSINE                  # (P, K)
            logit = sim / np.float32(temperature)
            for p in range(text.shape[0]):                                      # P <= a few dozen
                others = np.where(same[p][None, :], -np.inf, ref_sim)
                top = np.maximum(logit[:, p], others.max(axis=1))
                mine = np.exp(logit[:, p] - top)
                sim[:, p] = mine / (mine + np.exp(others - top[:, None]).sum(axis=1))
            sim *= self.proposal_scores()[:, None]
        phrase = sim.argmax(axis=1)
        best = sim[np.arange(len(phrase)), phrase]
        order = np.argsort(-best, kind="stable")[:k]
        order = order[best[order] >= min_score]
        return order.astype(np.int64), best[order].astype(np.float32), phrase[order].astype(np.int64)

    def point_rows(self, keys: np.ndarray) -> np.ndarray:
        """(N,) int64 row of the instance holding each voxel key (-1: none; where instances share a voxel,
        the one with more observations). Sorted lookup table, rebuilt only after the map changed."""
        if self._lookup is None:
            all_keys, owner = concat_sets(self.voxels)
            # among owners of one key keep the most observed: sort by (key, -observations) and take firsts
            rank = -self.observations[owner] if owner.size else owner
            order = np.lexsort((rank, all_keys))
            all_keys, owner = all_keys[order], owner[order]
            first = np.ones(all_keys.size, bool)
            first[1:] = all_keys[1:] != all_keys[:-1]
            self._lookup = (all_keys[first], owner[first])
        table, owner = self._lookup
        out = np.full(len(keys), -1, np.int64)
        if table.size:
            pos = np.minimum(np.searchsorted(table, keys), table.size - 1)
            hit = table[pos] == keys
            out[hit] = owner[pos[hit]]
        return out

    def _checked_text(self, text) -> np.ndarray:
        text = np.asarray(text, np.float32)
        if text.ndim != 2 or text.shape[0] < 1 or text.shape[1] != self.embedding_dim:
            raise ValueError(f"text embeddings must be (K >= 1, {self.embedding_dim}), got {text.shape}")
        return text

    # ------------------------------------------------------------------ update

    def update(self, xyz: np.ndarray, masks: np.ndarray, embeddings: np.ndarray, proposal_scores: np.ndarray,
               stamp: float, region: Region | None = None) -> UpdateResult:
        """Fold the M instances of one cloud into the map.

        Args:
            xyz: (N, 3) points of the segmented cloud, map frame.
            masks: (M, N) bool instance masks over them. embeddings: (M, C) unit student embeddings.
            proposal_scores: (M,) Mask3D proposal scores.
            stamp: the cloud's time in seconds.
            region: what this cloud re-observed; None = the ``cfg.margin`` cells holding its points and
                their neighbours.

        The rule:
            1. Each observation becomes a voxel set; those under ``min_voxels`` are ignored.
            2. Association: voxel IoU between observations and the map instances near them, gated by
               ``match_iou`` and ``min_cosine`` and tie-broken by cosine; one Hungarian assignment.
               A matched instance keeps its id; inside ``region`` its voxels become the observation's
               (outside they are kept), and its embedding, scores and counts are fused. A further
               observation lying ``merge_overlap`` inside a matched instance (``merge_cosine`` gated: one
               object split into two proposals) joins it too.
            3. Map instances re-observed (``reobserved_fraction`` of their voxels inside ``region``) but
               not matched vanished: with ``relocate_distance`` > 0 an unmatched observation of the same
               kind (cosine) within that distance takes over the id (a moved object); else they count a
               miss and go after ``miss_limit`` misses in a row.
            4. The other observations get new ids.
            5. Instances touched by this update merge with any map instance holding ``merge_overlap`` of
               the smaller one's voxels (``merge_cosine`` gated; two new ones never merge with each
               other); the older (smaller) id survives.
        """
        cfg = self.cfg
        xyz = np.asarray(xyz)
        masks = np.asarray(masks, bool)
        embeddings = np.asarray(embeddings, np.float32)
        proposal_scores = np.asarray(proposal_scores, np.float32)
        m = len(masks)
        if masks.ndim != 2 or masks.shape[1] != len(xyz) or embeddings.shape != (m, self.embedding_dim) \
                or proposal_scores.shape != (m,):
            raise ValueError(f"update needs masks (M, {len(xyz)}), embeddings (M, {self.embedding_dim}) and "
                             f"scores (M,); got {masks.shape}, {embeddings.shape}, {proposal_scores.shape}")
        result = UpdateResult(np.full(m, -1, np.int64), [], [], [], [], [])
        if len(xyz) == 0:
            return result
        grid = self.ensure_grid(xyz)
        keys, inside = grid.keys(xyz)
        if region is None:   # the cells around the cloud's points (the space above a floor included)
            region = Region(cfg.margin, neighbourhood(grid.keys(xyz[inside], cfg.margin)[0], 1))

        obs_sets, obs_rows, n_points = self._observation_sets(keys, inside, masks)
        obs_emb = embeddings[obs_rows]
        obs_w = n_points * np.maximum(proposal_scores[obs_rows], 1e-6)
        obs_score = proposal_scores[obs_rows]
        touched: set[int] = set()   # map ids updated or created now

        # 2. association with the map instances near the observations
        cand = self._candidates(obs_sets, region)
        iou, contained, cos = self._pair_measures(obs_sets, obs_emb, cand)
        valid = (iou >= max(cfg.match_iou, 1e-9)) & (cos >= cfg.min_cosine)
        pairs = _assign(np.where(valid, iou + 0.01 * cos, -np.inf))
        matched_obs = np.zeros(len(obs_sets), bool)
        matched_rows: set[int] = set()
        for o, c in pairs:
            row = int(cand[c])
            self._absorb(row, obs_sets[o], obs_emb[o], obs_w[o], obs_score[o], n_points[o], stamp, region)
            matched_obs[o] = True
            matched_rows.add(row)
        # further proposals of an already matched object (a split proposal) join it instead of a new id
        part_of = np.where((contained >= cfg.merge_overlap) & (cos >= cfg.merge_cosine), contained, -np.inf)
        for o in np.flatnonzero(~matched_obs):
            c = int(np.argmax(part_of[o])) if cand.size else 0
            if cand.size and np.isfinite(part_of[o, c]) and int(cand[c]) in matched_rows:
                self._absorb(int(cand[c]), obs_sets[o], obs_emb[o], obs_w[o], obs_score[o], n_points[o], stamp,
                             None)
                matched_obs[o] = True
                pairs.append((int(o), c))
        for o, c in pairs:
            row = int(cand[c])
            result.observation_ids[obs_rows[o]] = self.ids[row]
            result.matched.append(int(self.ids[row]))
            touched.add(int(self.ids[row]))

        # 3. vanished instances: re-observed, not matched
        vanished = [int(r) for r in cand if int(r) not in matched_rows and self._reobserved(int(r), region)]
        free_obs = np.flatnonzero(~matched_obs)
        if cfg.relocate_distance > 0 and vanished and free_obs.size:
            for o, v in self._relocations(free_obs, vanished, obs_sets, obs_emb):
                row = vanished[v]
                self.voxels[row] = np.zeros(0, np.int64)   # the object left its old place
                self._absorb(row, obs_sets[o], obs_emb[o], obs_w[o], obs_score[o], n_points[o], stamp, region)
                matched_obs[o] = True
                result.observation_ids[obs_rows[o]] = self.ids[row]
                result.relocated.append(int(self.ids[row]))
                touched.add(int(self.ids[row]))
            vanished = [r for r in vanished if int(self.ids[r]) not in touched]
        if vanished:
            self.misses[vanished] += 1
        gone = [r for r in vanished if cfg.miss_limit > 0 and self.misses[r] >= cfg.miss_limit]

        # 4. new instances
        for o in np.flatnonzero(~matched_obs):
            new_id = self._append(obs_sets[o], obs_emb[o], obs_w[o], obs_score[o], n_points[o], stamp)
            result.observation_ids[obs_rows[o]] = new_id
            result.new.append(new_id)
            touched.add(new_id)

        result.removed = sorted(int(self.ids[r]) for r in gone)
        self._drop_rows(gone)
        # 5. merges
        result.merged = self._merge(touched, new=set(result.new))
        absorbed = {b for _, b in result.merged}
        survivor = {b: a for a, b in result.merged}
        ids = result.observation_ids
        for b in absorbed:
            ids[ids == b] = survivor[b]
        result.new = sorted(i for i in result.new if i not in absorbed)
        result.matched = sorted(set(result.matched) - absorbed)
        result.relocated = sorted(set(result.relocated) - absorbed)
        self._refresh_geometry([self.row_of(i) for i in touched if i not in absorbed])
        self._lookup = None
        return result

    def _observation_sets(self, keys: np.ndarray, inside: np.ndarray, masks: np.ndarray
                          ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Unique voxel keys of each mask (points outside the key range left out), the input rows they
        come from and their point counts; masks under ``min_voxels`` voxels are left out."""
        inst, pts = np.nonzero(masks & inside[None, :])
        k = keys[pts]
        order = np.lexsort((k, inst))
        inst, k = inst[order], k[order]
        first = np.ones(k.size, bool)
        first[1:] = (k[1:] != k[:-1]) | (inst[1:] != inst[:-1])
        inst_u, k_u = inst[first], k[first]
        bounds = np.searchsorted(inst_u, np.arange(len(masks) + 1))
        sizes = np.diff(bounds)
        rows = np.flatnonzero(sizes >= self.cfg.min_voxels)
        sets = [k_u[bounds[r]:bounds[r + 1]] for r in rows]
        n_points = np.bincount(inst, minlength=len(masks))[rows].astype(np.float64)
        return sets, rows, n_points

    def _candidates(self, obs_sets: list[np.ndarray], region: Region) -> np.ndarray:
        """Rows of map instances whose box meets the observations' or the region's box (a cheap
        superset of those that can overlap or be re-observed; cost independent of far-away instances)."""
        if len(self) == 0:
            return np.zeros(0, np.int64)
        grid = self.grid
        pieces = [grid.centers(s) for s in obs_sets if s.size]
        if region.cells.size:
            cells = unpack(region.cells)
            lo_hi = np.stack([cells.min(0), cells.max(0) + 1]) * region.cell_size + np.asarray(grid.origin)
            pieces.append(lo_hi)
        if not pieces:
            return np.zeros(0, np.int64)
        allp = np.concatenate(pieces)
        lo, hi = allp.min(0) - grid.size, allp.max(0) + grid.size
        near = ((self.box_max >= lo) & (self.box_min <= hi)).all(axis=1)
        return np.flatnonzero(near)

    def _pair_measures(self, obs_sets, obs_emb, cand) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(O, C) voxel IoU, share of the observation's voxels inside the candidate, and embedding cosine
        between observations and candidate rows."""
        if len(obs_sets) == 0 or cand.size == 0:
            zeros = np.zeros((len(obs_sets), cand.size))
            return zeros, zeros, zeros
        inter = overlap_counts(obs_sets, [self.voxels[r] for r in cand]).astype(np.float64)
        size_o = np.array([s.size for s in obs_sets], np.float64)
        size_c = self.voxel_counts()[cand].astype(np.float64)
        iou = inter / np.maximum(size_o[:, None] + size_c[None, :] - inter, 1.0)
        cos = obs_emb @ self.embeddings()[cand].T
        return iou, inter / size_o[:, None], cos

    def _reobserved(self, row: int, region: Region) -> bool:
        vox = self.voxels[row]
        if vox.size == 0:
            return True
        inside = isin_sorted(self.grid.coarse(vox, region.cell_size), region.cells)
        return bool(inside.mean() >= self.cfg.reobserved_fraction)

    def _relocations(self, free_obs, vanished, obs_sets, obs_emb) -> list[tuple[int, int]]:
        """(observation, index into vanished) pairs: centroid distance within ``relocate_distance``,
        cosine gated, one Hungarian assignment on distance."""
        obs_c = np.stack([self.grid.centers(obs_sets[o]).mean(0) for o in free_obs])
        van_c = self.centroids[vanished]
        dist = np.linalg.norm(obs_c[:, None] - van_c[None], axis=2)
        cos = obs_emb[free_obs] @ self.embeddings()[vanished].T
        ok = (dist <= self.cfg.relocate_distance) & (cos >= self.cfg.min_cosine)
        return [(int(free_obs[a]), b) for a, b in _assign(np.where(ok, -dist, -np.inf))]

    def _absorb(self, row, vox, emb, w, score, n_points, stamp, region: Region | None) -> None:
        """Fuse one observation into map row ``row``: its voxels replace the row's inside ``region`` (kept
        outside; ``region`` None: added to them); embedding, scores and counts are fused."""
        old = self.voxels[row]
        if old.size and region is not None:
            old = old[~isin_sorted(self.grid.coarse(old, region.cell_size), region.cells)]
        self.voxels[row] = np.union1d(old, vox)
        self.emb_sum[row] += np.float32(w) * emb
        self.weight[row] += w
        self.score_sum[row] += n_points * score
        self.points_sum[row] += n_points
        self.observations[row] += region is not None   # a split proposal's second part is the same cloud
        self.last_seen[row] = stamp
        self.misses[row] = 0

    def _append(self, vox, emb, w, score, n_points, stamp) -> int:
        new_id = self.next_id
        self.next_id += 1
        self.ids = np.append(self.ids, new_id)
        self.voxels.append(vox)
        self.emb_sum = np.concatenate([self.emb_sum, (np.float32(w) * emb)[None]])
        self.weight = np.append(self.weight, w)
        self.score_sum = np.append(self.score_sum, n_points * score)
        self.points_sum = np.append(self.points_sum, n_points)
        self.observations = np.append(self.observations, 1)
        self.first_seen = np.append(self.first_seen, stamp)
        self.last_seen = np.append(self.last_seen, stamp)
        self.misses = np.append(self.misses, 0)
        for name in _GEOMETRY:
            shape = getattr(self, name).shape[1:]
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros((1, *shape))]))
        return new_id

    def _drop_rows(self, rows) -> None:
        if len(rows) == 0:
            return
        keep = np.ones(len(self), bool)
        keep[list(rows)] = False
        for name in _ARRAYS + _GEOMETRY:
            setattr(self, name, getattr(self, name)[keep])
        self.voxels = [v for v, k in zip(self.voxels, keep) if k]

    def _merge(self, touched: set[int], new: set[int]) -> list[tuple[int, int]]:
        """Merge touched instances with the instances they overlap strongly; (survivor, absorbed) pairs.
        Two instances both ``new`` in this update are never merged: Mask3D's NMS already judged them as
        proposals of one cloud (merging them made the map's AP worse than the per-cloud mode's)."""
        if not touched or len(self) < 2:
            return []
        rows_t = np.array([self.row_of(i) for i in sorted(touched)])
        self._refresh_geometry(rows_t)
        cand = self._candidates([self.voxels[r] for r in rows_t], Region(self.cfg.margin, np.zeros(0, np.int64)))
        inter = overlap_counts([self.voxels[r] for r in rows_t], [self.voxels[r] for r in cand]).astype(np.float64)
        sizes = self.voxel_counts().astype(np.float64)
        smaller = np.minimum(sizes[rows_t][:, None], sizes[cand][None, :])
        cos = self.embeddings()[rows_t] @ self.embeddings()[cand].T
        strong = (inter / np.maximum(smaller, 1.0) >= self.cfg.merge_overlap) & (cos >= self.cfg.merge_cosine)
        strong &= rows_t[:, None] != cand[None, :]
        is_new = np.isin(self.ids, np.fromiter(new, np.int64, len(new)))
        strong &= ~(is_new[rows_t][:, None] & is_new[cand][None, :])
        a, b = np.nonzero(strong)
        if a.size == 0:
            return []
        # union-find over the strong pairs; each group collapses into its smallest (oldest) id
        parent = {int(self.ids[r]): int(self.ids[r]) for r in np.concatenate([rows_t[a], cand[b]])}

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for ra, rb in zip(rows_t[a], cand[b]):
            x, y = find(int(self.ids[ra])), find(int(self.ids[rb]))
            if x != y:
                parent[max(x, y)] = min(x, y)
        merged = sorted((find(i), i) for i in parent if find(i) != i)
        for keep_id, gone_id in merged:
            k, g = self.row_of(keep_id), self.row_of(gone_id)
            self.voxels[k] = np.union1d(self.voxels[k], self.voxels[g])
            for name in ("emb_sum", "weight", "score_sum", "points_sum"):
                getattr(self, name)[k] += getattr(self, name)[g]
            # both may have been found in the same clouds: the larger count is a lower bound, the sum is not
            self.observations[k] = max(self.observations[k], self.observations[g])
            self.first_seen[k] = min(self.first_seen[k], self.first_seen[g])
            self.last_seen[k] = max(self.last_seen[k], self.last_seen[g])
            self.misses[k] = 0
            self._drop_rows([g])
        self._refresh_geometry([self.row_of(s) for s in {s for s, _ in merged}])
        return merged

    def _refresh_geometry(self, rows) -> None:
        """Boxes (voxel-aligned) and centroids (mean voxel centre) of ``rows`` from their voxels."""
        rows = [int(r) for r in rows if self.voxels[int(r)].size]
        if not rows:
            return
        keys, owner = concat_sets([self.voxels[r] for r in rows])
        cells = unpack(keys)
        starts = np.searchsorted(owner, np.arange(len(rows)))
        origin, size = np.asarray(self.grid.origin), self.grid.size
        idx = np.asarray(rows)
        self.box_min[idx] = np.minimum.reduceat(cells, starts, axis=0) * size + origin
        self.box_max[idx] = (np.maximum.reduceat(cells, starts, axis=0) + 1) * size + origin
        counts = np.diff(np.append(starts, keys.size))
        self.centroids[idx] = (np.add.reduceat(cells.astype(np.float64), starts, axis=0) / counts[:, None]
                               + 0.5) * size + origin
        obb = grouped_oriented_boxes((cells + 0.5) * size + origin, counts)
        self.obb_center[idx], self.obb_yaw[idx] = obb.center, obb.yaw
        self.obb_size[idx] = obb.size + size          # voxel centres: the box reaches half a voxel further

    # ------------------------------------------------------------------ state as arrays (map_file)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The map as plain arrays and a JSON-able header: what :mod:`folk_ros.core.map_file` writes."""
        keys, _ = concat_sets(self.voxels)
        offsets = np.concatenate([[0], np.cumsum(self.voxel_counts())]).astype(np.int64)
        arrays = {name: np.ascontiguousarray(getattr(self, name)) for name in _ARRAYS}
        arrays.update(voxel_keys=np.ascontiguousarray(keys), voxel_offsets=offsets)
        header = {"next_id": self.next_id, "embedding_dim": self.embedding_dim,
                  "embedding_space": self.embedding_space,
                  "grid": None if self.grid is None else {"size": self.grid.size, "origin": list(self.grid.origin)},
                  "config": asdict(self.cfg),
                  "frame_origin": None if self.frame_origin is None else [float(v) for v in self.frame_origin]}
        return arrays, header

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], header: dict, cfg: MapConfig | None = None) -> "InstanceMap":
        """Inverse of :meth:`state`, checking shapes, dtypes, finiteness, voxel sets and ids (ValueError
        or KeyError says what is wrong). ``cfg`` replaces the saved settings (the grid stays the saved one)."""
        out = cls(int(header["embedding_dim"]), cfg or MapConfig.from_dict(header["config"]),
                  str(header["embedding_space"]))
        grid = header["grid"]
        out.grid = None if grid is None else VoxelGrid(float(grid["size"]), tuple(float(v) for v in grid["origin"]))
        out.next_id = int(header["next_id"])
        origin = header.get("frame_origin")
        out.frame_origin = None if origin is None else np.asarray(origin, np.float64).reshape(3)
        m = arrays["ids"].shape[0]
        want = {"ids": ((m,), np.int64), "emb_sum": ((m, out.embedding_dim), np.float32),
                "voxel_offsets": ((m + 1,), np.int64)}
        want.update({n: ((m,), np.float64) for n in ("weight", "score_sum", "points_sum", "first_seen",
                                                     "last_seen")})
        want.update({n: ((m,), np.int64) for n in ("observations", "misses")})
        for name, (shape, dtype) in want.items():
            a = arrays[name]
            if a.shape != shape or a.dtype != dtype:
                raise ValueError(f"{name} is {a.dtype}{a.shape}, expected {np.dtype(dtype)}{shape}")
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                raise ValueError(f"{name} has non-finite values")
        keys, offsets, ids = arrays["voxel_keys"], arrays["voxel_offsets"], arrays["ids"]
        if keys.dtype != np.int64 or keys.ndim != 1 or offsets[0] != 0 or offsets[-1] != keys.size \
                or (np.diff(offsets) < 0).any():
            raise ValueError("voxel_keys / voxel_offsets do not describe the instances' voxel sets")
        if keys.size and (out.grid is None or (np.abs(unpack(keys)) > MAX_CELL).any()):
            raise ValueError("voxel keys outside the grid")
        if np.unique(ids).size != m or (m and (ids.min() < 0 or ids.max() >= out.next_id)):
            raise ValueError("instance ids are not unique, or not below next_id")
        for name in _ARRAYS:
            setattr(out, name, arrays[name].copy())
        out.voxels = [np.unique(keys[offsets[i]:offsets[i + 1]]) for i in range(m)]
        for name in _GEOMETRY:
            setattr(out, name, np.zeros((m, 3)) if name != "obb_yaw" else np.zeros(m))
        out._refresh_geometry(range(m))
        return out


def _assign(score: np.ndarray) -> list[tuple[int, int]]:
    """One maximum-score assignment (scipy's Hungarian) over the finite entries of ``score`` (rows x cols);
    -inf marks pairs that may not be matched."""
    if score.size == 0 or not np.isfinite(score).any():
        return []
    finite = np.isfinite(score)
    cost = np.where(finite, -score, 1e9)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if finite[r, c]]
