"""Mask3D's DBSCAN split of query masks (``use_dbscan``): every mask cut into its DBSCAN clusters.

The official code runs scikit-learn's DBSCAN per query. Here, with ``min_samples`` 1 (the components of
the eps-graph), every query is split at once over cells of diagonal eps (:func:`mask_parts`); DBSCAN
proper (core and border points) and the query-by-query path remain for other settings and for clouds
with too many neighbour pairs.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from folk_ros.core import torch_threads
from folk_ros.core.voxel_masks import stable_sort_indices
from folk_ros.core.voxelize import cell_keys, first_occurrence, key_ids

from .parts import MaskParts


def _sort_order(keys: np.ndarray, bound: int) -> np.ndarray:
    """The stable ascending order of (K,) non-negative integer ``keys`` below ``bound`` (numpy's
    ``argsort(kind="stable")``), sorted by torch on the calling thread's torch threads in the narrowest
    integer type (:func:`~folk_ros.core.voxel_masks.stable_sort_indices`; 1.8M int64 keys on 2 cores:
    38-49 ms against numpy's 101 ms, int32 keys in about half that)."""
    return stable_sort_indices(torch.from_numpy(np.ascontiguousarray(keys)), bound).numpy()


def _nonzero(bools: np.ndarray) -> tuple[np.ndarray, ...]:
    """``np.nonzero`` of an array of bools (any strides), by torch on the calling thread's torch threads (the
    (cell pair, column) bits of a held-out synthetic room, 2.4M bools: 4.6 ms against numpy's 9.5 ms)."""
    return tuple(t.numpy() for t in torch.from_numpy(bools).nonzero(as_tuple=True))


def eps_components(xyz: np.ndarray, eps: float) -> np.ndarray:
    """Connected components of the graph ``|p - q| <= eps`` = DBSCAN with min_samples 1.

    xyz: (M, 3) float.  Returns (M,) int64 labels numbered by first occurrence.
    Exact and fast for large eps: points are binned into cells of diagonal
    ``eps / 2`` (a cell is a clique); two cells whose centres are within
    ``eps / 2`` are certainly connected, cells further than ``eps + diag`` never
    are, and only the remaining cell pairs that join different components are
    checked point by point.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    m = xyz.shape[0]
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    side = eps / (2.0 * np.sqrt(3.0))
    cell = np.floor((xyz - xyz.min(0)) / side).astype(np.int64)
    ucell, point_cell = np.unique(cell, axis=0, return_inverse=True)
    point_cell = point_cell.reshape(-1)
    nc = ucell.shape[0]
    centres = (ucell + 0.5) * side
    diag = side * np.sqrt(3.0)
    tree = cKDTree(centres)
    sure = tree.query_pairs(eps - diag, output_type="ndarray")
    graph = coo_matrix((np.ones(len(sure)), (sure[:, 0], sure[:, 1])), shape=(nc, nc)) if len(sure) \
        else coo_matrix((nc, nc))
    _, comp = connected_components(graph, directed=False)
    maybe = tree.query_pairs(eps + diag, output_type="ndarray")
    if len(maybe):
        maybe = maybe[comp[maybe[:, 0]] != comp[maybe[:, 1]]]
    if len(maybe):
        order = np.argsort(point_cell, kind="stable")
        starts = np.searchsorted(point_cell[order], np.arange(nc + 1))
        n_comp = int(comp.max()) + 1
        parent = np.arange(n_comp)

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for ca, cb in maybe.tolist():          # exact point checks, skipped once joined
            ra, rb = find(comp[ca]), find(comp[cb])
            if ra == rb:
                continue
            pa = xyz[order[starts[ca]:starts[ca + 1]]]
            pb = xyz[order[starts[cb]:starts[cb + 1]]]
            if ((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1).min() <= eps * eps:
                parent[rb] = ra
        comp = np.array([find(c) for c in range(n_comp)], dtype=np.int64)[comp]
    return first_occurrence(comp[point_cell])[0]   # sklearn's DBSCAN order


def dbscan(xyz: np.ndarray, eps: float, min_samples: int = 1) -> np.ndarray:
    """DBSCAN labels (M,) int64 (-1 = noise), clusters numbered by first occurrence.

    ``min_samples == 1`` equals sklearn exactly (components of the eps-graph).
    For larger values, core points (>= min_samples neighbours within eps, self
    included) form clusters by eps-connectivity and a border point joins the
    cluster of its nearest core point (sklearn joins the first cluster that
    reaches it, which can differ on points between two clusters).
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    if min_samples <= 1:
        return eps_components(xyz, eps)
    tree = cKDTree(xyz)
    counts = tree.query_ball_point(xyz, eps, return_length=True)
    core = counts >= min_samples
    labels = np.full(xyz.shape[0], -1, dtype=np.int64)
    if not core.any():
        return labels
    labels[core] = eps_components(xyz[core], eps)
    core_idx = np.flatnonzero(core)
    d, nn = cKDTree(xyz[core]).query(xyz[~core], k=1, distance_upper_bound=eps)
    border = np.isfinite(d)
    lab = labels[~core]
    lab[border] = labels[core_idx[nn[border]]]
    labels[~core] = lab
    keep = labels >= 0
    labels[keep] = first_occurrence(labels[keep])[0]
    return labels


MAX_SPLIT_PAIRS = 10_000_000
"""Above this many neighbour pairs (estimated; 16 bytes each) :func:`mask_parts` splits query by query."""


def _estimated_pairs(tree: cKDTree, eps: float, sample: int = 500) -> float:
    """Neighbour pairs within ``eps`` among the tree's points, from the degrees of a strided sample (500
    points: within 1 % of the true count on a held-out synthetic room and on bench_node_latency's 200k-point
    room, in 1.6-2.7 ms against 6.8-8.0 ms for 2,000)."""
    n = tree.n
    picked = tree.data[:: max(1, n // sample)]
    degree = tree.query_ball_point(picked, eps, return_length=True).mean() - 1.0
    return degree * n / 2.0


def _index_type(bound: int) -> type:
    """int32 for indices below ``bound`` when they fit (half the bytes to gather and sort), else int64."""
    return np.int32 if bound < 2 ** 31 else np.int64


def _take_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a[rows]`` of a 2-d array, gathering each row as one record (numpy's row gather of a 2-d array takes
    a slower path: 1.95M rows of one uint64, 14 ms against 9)."""
    records = np.ascontiguousarray(a).view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).reshape(-1)
    return records[rows].view(a.dtype).reshape(len(rows), a.shape[1])


def _column_words(bools: np.ndarray) -> np.ndarray:
    """(A, Q) bool -> (A, ceil(Q / 64)) uint64 bit sets (bit q of word q // 64 = column q)."""
    packed = np.packbits(bools, axis=1, bitorder="little")
    padded = np.zeros((len(bools), -(-bools.shape[1] // 64) * 8), np.uint8)
    padded[:, :packed.shape[1]] = packed
    return padded.view("<u8")


def _unpack_columns(words: np.ndarray, columns: int) -> np.ndarray:
    """Inverse of :func:`_column_words`: (R, W) uint64 -> (R, columns) bool."""
    as_bytes = np.ascontiguousarray(words, dtype="<u8").view(np.uint8).reshape(len(words), 8 * words.shape[1])
    return np.unpackbits(as_bytes, axis=1, count=columns, bitorder="little").astype(bool)


MIN_SLAB_POINTS = 10_000
"""Fewest points per slab of :func:`_columnwise_eps_components`' neighbour search: smaller clouds are one slab."""


def _slabs(column: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Up to ``count`` slabs of points sorted by cell, each a run of whole cell columns (``column`` (A,): each
    point's cell index along x, non-decreasing) of about equal size with the next two cell columns as its
    halo: the only ones whose points can lie within eps of its own (cells are eps / sqrt(3) wide, and two
    widths exceed eps). Returns (first point, end of the halo) per slab: every neighbour pair has both ends
    in one slab (pairs inside a halo may be in two). Cells out of x order (keys too wide for
    :func:`~folk_ros.core.voxelize.cell_keys`' integers) are one slab."""
    if (np.diff(column) < 0).any():
        return [(0, len(column))]
    quantiles = column[np.arange(1, count) * len(column) // count]
    cuts = np.unique(np.r_[0, np.searchsorted(column, quantiles), len(column)])
    return [(int(start), int(np.searchsorted(column, column[stop] + 2)) if stop < len(column) else int(stop))
            for start, stop in zip(cuts[:-1], cuts[1:])]


def _or_by_key(key: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (K,) integer ``key`` values, each with the OR of its rows of ``words`` (K, W): (the
    position of one row of each key (D,), their OR-ed words (D, W)), by ascending key. Sorted by numpy's
    unstable argsort, which no result depends on (1M int32 keys of a 200k-point room's slab: 17 ms against
    20 for torch's stable sort on one thread)."""
    if key.size == 0:
        return np.zeros(0, np.int64), words
    order = np.argsort(key)
    key = key[order]
    firsts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return order[firsts], np.bitwise_or.reduceat(words[order], firsts, axis=0)


def _slab_tree(points: np.ndarray, eps: float) -> tuple[cKDTree, float]:
    """A kd-tree over one slab's points and its estimated neighbour pairs (:func:`_estimated_pairs`)."""
    tree = cKDTree(points, balanced_tree=False, compact_nodes=False)      # 2x faster build, as fast pairs
    return tree, _estimated_pairs(tree, eps)                              # on these points


def _cell_links(tree: cKDTree, cell: np.ndarray, words: np.ndarray, eps: float, n_cells: int):
    """The links between the cells of one slab: (cell a (L,), cell b (L,), the OR over the pairs ``|p - q| <=
    eps`` from a to b of the columns positive at both ends (L, W)), one row per pair of distinct cells.

    tree: over the slab's points, sorted by cell; ``cell`` (P,) and ``words`` (P, W) theirs. A pair's empty
    column set links nothing, kept rather than filtered (cheaper)."""
    pairs = tree.query_pairs(eps, output_type="ndarray")
    ci, cj = cell[pairs[:, 0]], cell[pairs[:, 1]]                        # i < j: cell[i] <= cell[j]
    both = _take_rows(words, pairs[:, 0]) & _take_rows(words, pairs[:, 1])
    key_type = _index_type(n_cells * n_cells)
    head, link_words = _or_by_key(ci.astype(key_type) * key_type(n_cells) + cj.astype(key_type), both)
    cross = ci[head] != cj[head]                                          # within a cell: its clique
    return ci[head][cross], cj[head][cross], link_words[cross]


def _full_link_groups(a: np.ndarray, b: np.ndarray, link_words: np.ndarray, cell_words: np.ndarray,
                      n_cells: int) -> tuple[int, np.ndarray]:
    """Cells joined through full links, links that carry every column positive in either of their cells
    (then both cells have the same columns): (number of groups, group of each cell (C,)).

    A group is one node per column: each of its columns is positive in all its cells, which that column's
    full links join, so contracting it leaves every column's components as they are (the 200k-point bench
    room: 20,568 cells in 4,926 groups, 1.42M (column, link) edges down to 0.20M)."""
    full = (link_words == cell_words[a]).all(1) & (link_words == cell_words[b]).all(1)
    graph = coo_matrix((np.ones(int(full.sum()), dtype=np.int8), (a[full], b[full])), shape=(n_cells, n_cells))
    return connected_components(graph, directed=False)


def _column_components(a: np.ndarray, b: np.ndarray, link_words: np.ndarray, cell_words: np.ndarray,
                       columns: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Components of the graph of (column, cell) nodes joined by the cell links ``a``-``b`` (L,) for the
    columns in ``link_words`` (L, W), a node per column positive in a cell (``cell_words`` (C, W)).

    Returns (the component of (column q, group g) at ``q * groups + g``, -1 where q is not positive in g;
    the group of each cell (C,); the number of groups): cells joined by full links are one group
    (:func:`_full_link_groups`), and links are OR-ed per pair of groups."""
    n_groups, group = _full_link_groups(a, b, link_words, cell_words, len(cell_words))
    group_words = np.empty((n_groups, cell_words.shape[1]), cell_words.dtype)
    group_words[group] = cell_words                                            # equal within a group
    ga, gb = group[a], group[b]
    apart = ga != gb                                                           # inside a group: nothing new
    ga, gb = np.minimum(ga[apart], gb[apart]), np.maximum(ga[apart], gb[apart])
    key_type = _index_type(n_groups * n_groups)
    head, edge_words = _or_by_key(ga.astype(key_type) * key_type(n_groups) + gb.astype(key_type), link_words[apart])
    node_q, node_g = _nonzero(_unpack_columns(group_words, columns).T)
    node_type = _index_type(node_q.size)
    node_of = np.full(columns * n_groups, -1, dtype=node_type)                # flat: 1-d gathers are 2x faster
    node_of[node_q * n_groups + node_g] = np.arange(node_q.size, dtype=node_type)
    e, q = _nonzero(_unpack_columns(edge_words, columns))
    q_base = q * n_groups
    src, dst = node_of[q_base + ga[head][e]], node_of[q_base + gb[head][e]]
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(node_q.size, node_q.size))
    _, comp = connected_components(graph, directed=False)
    component = np.full(columns * n_groups, -1, dtype=comp.dtype)
    component[node_q * n_groups + node_g] = comp
    return component, group, n_groups


def _row_ids(words: np.ndarray) -> np.ndarray:
    """(A,) int64 ids of the distinct rows of ``words`` (A, W) uint64."""
    if words.shape[1] == 1:
        return key_ids(words.view(np.int64)[:, 0])
    return key_ids(np.ascontiguousarray(words).view(np.dtype((np.void, 8 * words.shape[1]))).reshape(-1))


def _columnwise_eps_components(xyz: np.ndarray, positive: np.ndarray, eps: float) -> MaskParts | None:
    """eps-graph components of every column's positive points at once, or None when too many pairs.

    Exact, and cheap in the number of (pair, column) edges: the points are binned into cells of
    diagonal ``eps``, so a column's positive points in one cell are one clique, a node (column, cell).
    A neighbour search over the points positive in some column finds the pairs ``|p - q| <= eps``
    across cells; each pair carries the bit set of the columns positive at both ends, and the sets
    are OR-ed per cell pair (:func:`_cell_links`), so connected components run over (column, cell) nodes
    and (column, cell pair) edges rather than over every (point pair, column) (:func:`_column_components`).
    The search runs in slabs along x, as many as the calling thread has torch threads (at least
    :data:`MIN_SLAB_POINTS` points each), on threads of their own
    (:func:`~folk_ros.core.torch_threads.concurrently`).
    Returns the components as :class:`MaskParts` (:func:`_parts_over_atoms`).
    """
    words = _column_words(positive)                                            # (V, W) uint64 bit sets
    active = np.flatnonzero(words.any(1))
    points = xyz[active]
    side = eps / np.sqrt(3.0) * (1.0 - 1e-9)                                   # cell diagonal < eps
    grid = np.floor((points - points.min(0)) / side).astype(np.int64)
    point_cell = key_ids(cell_keys(grid))
    n_cells = int(point_cell.max()) + 1
    by_cell = _sort_order(point_cell, n_cells)                  # points sorted by cell: a pair i < j has
    cell = point_cell[by_cell].astype(_index_type(n_cells))    # cell[i] <= cell[j]; narrow: faster gathers
    points, words = np.take(points, by_cell, axis=0), words[active[by_cell]]
    slabs = _slabs(grid[by_cell, 0], max(1, min(torch.get_num_threads(), len(active) // MIN_SLAB_POINTS)))
    trees = torch_threads.concurrently([partial(_slab_tree, points[start:end], eps) for start, end in slabs])
    if sum(estimate for _, estimate in trees) > MAX_SPLIT_PAIRS:
        return None
    links = torch_threads.concurrently([partial(_cell_links, tree, cell[start:end], words[start:end], eps, n_cells)
                                        for (tree, _), (start, end) in zip(trees, slabs)])
    del trees
    cell_words = np.bitwise_or.reduceat(words, np.searchsorted(cell, np.arange(n_cells)), axis=0)
    component, group, n_groups = _column_components(*(np.concatenate(part) for part in zip(*links)), cell_words,
                                                    positive.shape[1])
    return _parts_over_atoms(active[by_cell], group[cell], words, component, n_groups, len(positive))


def _parts_over_atoms(voxel: np.ndarray, group: np.ndarray, words: np.ndarray, component: np.ndarray,
                      n_groups: int, n_voxels: int) -> MaskParts:
    """The parts of :func:`_column_components`' ``component`` table over atoms, the voxels of one group
    positive in the same columns. voxel, group (A,): each positive voxel and its group; words (A, W): its
    columns."""
    word_id = _row_ids(words)
    atom = key_ids(group.astype(np.int64) * (int(word_id.max()) + 1) + word_id)   # by group, then columns
    n_atoms = int(atom.max()) + 1
    by_atom = _sort_order(atom, n_atoms)
    atom_start = np.r_[0, np.cumsum(np.bincount(atom, minlength=n_atoms))]
    first = by_atom[atom_start[:-1]]                                           # one voxel of each atom
    entry_atom, entry_q = _nonzero(_unpack_columns(words[first], words.shape[1] * 64))
    comp = component[entry_q * n_groups + group[first][entry_atom]]           # every component has entries
    voxel = voxel[by_atom]
    lowest = np.full(int(comp.max()) + 1, n_voxels, np.int64)
    np.minimum.at(lowest, comp, np.minimum.reduceat(voxel, atom_start[:-1])[entry_atom])
    comp_query = np.empty_like(lowest)
    comp_query[comp] = entry_q
    order = np.argsort(comp_query * n_voxels + lowest)                         # by query, then lowest voxel
    part_of = np.empty_like(order)
    part_of[order] = np.arange(len(order))
    return MaskParts(voxel, atom_start, entry_atom.astype(np.int64), part_of[comp], comp_query[order])


def mask_parts(mask_logits: torch.Tensor, voxel_xyz: torch.Tensor, eps: float, min_points: int,
               logit_threshold: float = 0.0) -> MaskParts:
    """The DBSCAN clusters of every query mask (``logit > logit_threshold``), as :class:`MaskParts`.

    mask_logits (V, Q); voxel_xyz (V, 3). Noise voxels (``min_points > 1``) are in no part. With
    ``min_points <= 1`` (components of the eps-graph) all queries are split in vectorised passes when the
    neighbour pairs fit (:data:`MAX_SPLIT_PAIRS`), else one by one.
    """
    xyz = voxel_xyz.detach().cpu().numpy().astype(np.float64)
    positive = (mask_logits > logit_threshold).cpu().numpy()
    fast = _columnwise_eps_components(xyz, positive, eps) if min_points <= 1 and positive.any() else None
    if fast is not None:
        return fast
    vs, qs, parts, offset = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
    for q in range(mask_logits.shape[1]):
        sel = np.flatnonzero(positive[:, q])
        if sel.size == 0:
            continue
        labels = dbscan(xyz[sel], eps, min_points)
        inside = labels >= 0
        vs.append(sel[inside])
        qs.append(np.full(int(inside.sum()), q, dtype=np.int64))
        parts.append(labels[inside] + offset)
        offset += int(labels.max()) + 1 if inside.any() else 0
    return MaskParts.from_entries(np.concatenate(vs), np.concatenate(qs), np.concatenate(parts))


def dbscan_split(mask_logits: torch.Tensor, voxel_xyz: torch.Tensor, eps: float, min_points: int):
    """Split every query mask into its DBSCAN clusters (Mask3D's use_dbscan).

    mask_logits (V, Q); voxel_xyz (V, 3).  Returns (candidate logits (V, K), source
    query (K,) int64): candidate = query logits zeroed outside the cluster; order:
    by query, then by cluster id (:class:`MaskParts`).  Queries with an empty mask give no candidate.
    """
    parts = mask_parts(mask_logits, voxel_xyz, eps, min_points)
    v, q, part = parts.entries()
    out = mask_logits.new_zeros((mask_logits.shape[0], len(parts.part_query)))
    vt, qt, pt = (torch.from_numpy(a).to(mask_logits.device) for a in (v, q, part))
    out[vt, pt] = mask_logits[vt, qt]
    return out, torch.from_numpy(parts.part_query)
