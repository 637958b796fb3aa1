"""The live object map's core (no ROS): voxel keys, association, merges, removal, labels, queries, files.

Instances here are hand-made: points on the surfaces of boxes on a floor, one mask per box, and a
fixed unit embedding per object identity (plus a little noise per observation), so the expected ids
follow from the geometry alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import numpy as np
import pytest

from folk_ros.core.change_detection import ChangeDetector
from folk_ros.core.instance_map import InstanceMap, Region
from folk_ros.core.map_config import MapConfig
from folk_ros.core.map_file import MapFileError, load_map, save_map
from folk_ros.core.map_voxels import MAX_CELL, VoxelGrid, isin_sorted, neighbourhood, overlap_counts, pack, unpack

DIM = 16
RNG = np.random.default_rng(0)
IDENTITY = {name: v / np.linalg.norm(v) for name, v in
            (("box_a", RNG.normal(size=DIM)), ("box_b", RNG.normal(size=DIM)), ("box_c", RNG.normal(size=DIM)))}


def box_points(lo, hi, spacing=0.02):
    """Points on the five visible faces of an axis-aligned box (no bottom)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    axes = [np.arange(lo[k], hi[k] + 1e-9, spacing) for k in range(3)]
    faces = []
    for k in range(3):
        u, v = [a for a in range(3) if a != k]
        gu, gv = np.meshgrid(axes[u], axes[v], indexing="ij")
        for value in ((lo[k], hi[k]) if k != 2 else (hi[k],)):
            f = np.zeros((gu.size, 3))
            f[:, u], f[:, v], f[:, k] = gu.ravel(), gv.ravel(), value
            faces.append(f)
    return np.unique(np.round(np.concatenate(faces), 6), axis=0)


def floor_points(lo=(0, 0), hi=(4, 4), spacing=0.05):
    g = np.stack(np.meshgrid(np.arange(lo[0], hi[0], spacing), np.arange(lo[1], hi[1], spacing),
                             indexing="ij"), -1).reshape(-1, 2)
    return np.column_stack([g, np.zeros(len(g))])


def scene(boxes: dict, floor=((0, 0), (4, 4)), noise=0.0, seed=0):
    """(xyz (N, 3), masks (M, N), embeddings (M, DIM), scores (M,), names) for boxes {name: (lo, hi)}."""
    rng = np.random.default_rng(seed)
    parts = [floor_points(*floor)]
    names = list(boxes)
    for name in names:
        parts.append(box_points(*boxes[name]))
    xyz = np.concatenate(parts).astype(np.float32)
    sizes = [len(p) for p in parts]
    owner = np.repeat(np.arange(len(parts)) - 1, sizes)            # -1: floor
    masks = np.stack([owner == i for i in range(len(names))]) if names else np.zeros((0, len(xyz)), bool)
    emb = np.stack([IDENTITY[n.split("#")[0]] + noise * rng.normal(size=DIM) for n in names]) if names \
        else np.zeros((0, DIM))
    emb = (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-9)).astype(np.float32)
    return xyz, masks, emb, np.full(len(names), 0.9, np.float32), names


def update(imap, boxes, stamp, **kw):
    xyz, masks, emb, scores, _ = scene(boxes, **kw)
    return imap.update(xyz, masks, emb, scores, stamp)


A = ((0.5, 0.5, 0.0), (1.0, 1.0, 0.5))
B = ((2.5, 2.5, 0.0), (3.0, 3.2, 0.8))


# ---------------------------------------------------------------------------------------------
# voxel keys


def test_pack_roundtrip_and_order():
    cells = np.array([[0, 0, 0], [-1, 2, 3], [MAX_CELL, -MAX_CELL, 5], [1, 0, 0]])
    np.testing.assert_array_equal(unpack(pack(cells)), cells)
    keys = pack(cells)
    assert np.array_equal(np.argsort(keys), np.lexsort(cells.T[::-1]))   # keys sort like (x, y, z) rows


def test_grid_checks_range_before_the_cast():
    grid = VoxelGrid(0.05)
    xyz = np.array([[0.0, 0.0, 0.0], [1e30, 0, 0], [0, 171_800.0, 0], [0, 0, -1e9]])
    _, inside = grid.keys(xyz)
    assert inside.tolist() == [True, False, False, False]   # never wrapped back into the room
    utm = np.array([[4_600_000.0, 500_000.0, 10.0], [4_600_003.0, 500_001.0, 11.0]])
    grid = VoxelGrid.around(utm, 0.05)
    keys, inside = grid.keys(utm)
    assert inside.all() and keys[0] != keys[1]
    np.testing.assert_allclose(grid.centers(keys), utm, atol=0.05)


def test_overlap_counts_with_shared_keys():
    a = [np.array([1, 2, 3]), np.array([3, 4]), np.array([], np.int64)]
    b = [np.array([2, 3, 9]), np.array([3]), np.array([4, 5])]
    want = np.array([[len(set(x) & set(y)) for y in b] for x in a])
    np.testing.assert_array_equal(overlap_counts(a, b), want)


def test_neighbourhood_dilates_by_one_cell():
    k = pack(np.array([[0, 0, 0]]))
    assert neighbourhood(k, 1).size == 27 and isin_sorted(k, neighbourhood(k, 1)).all()


# ---------------------------------------------------------------------------------------------
# association


def test_same_objects_keep_their_ids():
    imap = InstanceMap(DIM)
    r1 = update(imap, {"box_a": A, "box_b": B}, 1.0, noise=0.05, seed=1)
    assert r1.new == [0, 1] and len(imap) == 2
    for t in (2.0, 3.0):
        r = update(imap, {"box_b": B, "box_a": A}, t, noise=0.05, seed=int(t))   # order changes, ids do not
        assert r.new == [] and r.matched == [0, 1]
        assert r.observation_ids.tolist() == [1, 0]
    row = imap.row_of(0)
    assert imap.observations[row] == 3 and imap.first_seen[row] == 1.0 and imap.last_seen[row] == 3.0
    np.testing.assert_allclose(imap.box_min[row], A[0], atol=0.06)
    np.testing.assert_allclose(imap.box_max[row], A[1], atol=0.06)
    np.testing.assert_allclose(imap.obb_center[row], np.mean(A, axis=0), atol=0.06)   # oriented box too
    np.testing.assert_allclose(imap.obb_size[row], np.subtract(A[1], A[0]), atol=0.08)
    np.testing.assert_allclose(np.linalg.norm(imap.embeddings(), axis=1), 1.0, rtol=1e-5)


def test_fused_embedding_is_the_weighted_mean():
    imap = InstanceMap(DIM, MapConfig(min_cosine=-1.0))     # fuse whatever the embeddings say
    xyz, masks, emb, _, _ = scene({"box_a": A})
    e2 = IDENTITY["box_b"].astype(np.float32)[None]
    imap.update(xyz, masks, emb, np.array([0.9], np.float32), 0.0)
    imap.update(xyz, masks, e2, np.array([0.3], np.float32), 1.0)
    want = 0.9 * emb[0] + 0.3 * e2[0]                       # same points: weights are the scores
    np.testing.assert_allclose(imap.embeddings()[0], want / np.linalg.norm(want), atol=1e-5)
    np.testing.assert_allclose(imap.proposal_scores()[0], 0.6, atol=1e-6)


def test_another_kind_of_object_in_the_same_place_gets_a_new_id():
    imap = InstanceMap(DIM, MapConfig(miss_limit=0))
    update(imap, {"box_a": A}, 1.0)
    r = update(imap, {"box_c": A}, 2.0)                      # same voxels, embedding far apart
    assert r.new == [1] and r.matched == []


def test_assignment_is_global_not_greedy():
    """Observation 0 overlaps map instance A best, but only the assignment 0->B, 1->A keeps both."""
    imap = InstanceMap(DIM, MapConfig(match_iou=0.3, merge_overlap=1.0, miss_limit=0))
    bar_a = ((0.5, 0.5, 0.0), (1.5, 0.7, 0.3))
    bar_b = ((1.3, 0.5, 0.0), (2.5, 0.7, 0.3))
    update(imap, {"box_a": bar_a, "box_a#2": bar_b}, 1.0)
    assert imap.ids.tolist() == [0, 1]
    obs0 = ((0.9, 0.5, 0.0), (2.1, 0.7, 0.3))              # overlaps both bars
    obs1 = ((0.5, 0.5, 0.0), (1.0, 0.7, 0.3))              # overlaps only bar A
    xyz, masks, emb, scores, _ = scene({"box_a": obs0, "box_a#2": obs1})
    inter = overlap_counts(imap._observation_sets(*imap.grid.keys(xyz), masks)[0], imap.voxels)
    assert inter[0, 0] > 0 and inter[0, 1] > 0 and inter[1, 1] == 0
    r = imap.update(xyz, masks, emb, scores, 2.0)
    assert r.observation_ids.tolist() == [1, 0] and r.new == []


def test_two_proposals_of_one_object_merge_into_the_older_id():
    imap = InstanceMap(DIM)
    update(imap, {"box_a": A}, 1.0)
    halves = {"box_a": ((0.5, 0.5, 0.0), (0.74, 1.0, 0.5)), "box_a#2": ((0.76, 0.5, 0.0), (1.0, 1.0, 0.5))}
    r = update(imap, halves, 2.0)
    assert len(imap) == 1 and imap.ids.tolist() == [0]
    assert r.observation_ids.tolist() == [0, 0] and r.new == [] and r.matched == [0]
    np.testing.assert_allclose(imap.box_max[0], A[1], atol=0.06)    # the halves cover the whole box again
    assert imap.observations[0] == 2                                 # clouds, not proposals


def test_two_map_instances_that_come_to_overlap_merge():
    imap = InstanceMap(DIM, MapConfig(match_iou=0.9, miss_limit=0))
    left, right = ((0.5, 0.5, 0.0), (0.9, 1.0, 0.5)), ((0.8, 0.5, 0.0), (1.2, 1.0, 0.5))
    update(imap, {"box_a": left}, 1.0, floor=((0, 0), (1.5, 1.5)))
    update(imap, {"box_a": right}, 2.0, floor=((0, 0), (1.5, 1.5)))   # IoU below 0.9: a second id
    assert imap.ids.tolist() == [0, 1]
    r = update(imap, {"box_a": ((0.5, 0.5, 0.0), (1.2, 1.0, 0.5))}, 3.0, floor=((0, 0), (1.5, 1.5)))
    assert (0, 1) in r.merged and imap.ids.tolist() == [0]


def test_reobserved_empty_region_removes_the_instance():
    imap = InstanceMap(DIM, MapConfig(miss_limit=2))
    update(imap, {"box_a": A, "box_b": B}, 1.0)
    r = update(imap, {"box_b": B}, 2.0)                      # box A's place seen again, A gone
    assert r.removed == [] and imap.misses[imap.row_of(0)] == 1
    r = update(imap, {"box_b": B}, 3.0)
    assert r.removed == [0] and imap.ids.tolist() == [1]
    # a cloud of another area re-observes nothing of box B: it stays
    for t in (4.0, 5.0, 6.0):
        update(imap, {}, t, floor=((10, 10), (12, 12)))
    assert imap.ids.tolist() == [1]
    imap.cfg = replace(imap.cfg, miss_limit=0)              # never remove
    for t in (7.0, 8.0, 9.0):
        update(imap, {}, t)
    assert imap.ids.tolist() == [1]


@pytest.mark.parametrize("relocate", [0.0, 2.0])
def test_moved_box_new_id_or_kept_as_configured(relocate):
    imap = InstanceMap(DIM, MapConfig(miss_limit=1, relocate_distance=relocate))
    update(imap, {"box_a": A}, 1.0)
    moved = ((1.5, 1.5, 0.0), (2.0, 2.0, 0.5))
    r = update(imap, {"box_a": moved}, 2.0)
    if relocate:
        assert r.relocated == [0] and r.removed == [] and imap.ids.tolist() == [0]
    else:
        assert r.new == [1] and r.removed == [0] and imap.ids.tolist() == [1]
    np.testing.assert_allclose(imap.centroids[0][:2], (1.75, 1.75), atol=0.05)   # at its new place only


def test_ids_are_never_reused():
    imap = InstanceMap(DIM)
    update(imap, {"box_a": A}, 1.0)
    imap.reset()
    assert len(imap) == 0
    assert update(imap, {"box_a": A}, 2.0).new == [1]


def test_bad_update_inputs_are_clear_errors():
    imap = InstanceMap(DIM)
    xyz, masks, emb, scores, _ = scene({"box_a": A})
    with pytest.raises(ValueError, match="masks"):
        imap.update(xyz, masks[:, :-1], emb, scores, 0.0)
    with pytest.raises(ValueError, match="embeddings"):
        imap.update(xyz, masks, emb[:, :3], scores, 0.0)
    with pytest.raises(ValueError, match="margin"):
        MapConfig(voxel_size=0.5, margin=0.2)
    with pytest.raises(ValueError, match="miss_limit"):
        MapConfig(miss_limit=-1)


# ---------------------------------------------------------------------------------------------
# reading: labels, queries, per-point lookup


def test_label_and_query_are_one_matmul_over_fused_embeddings():
    imap = InstanceMap(DIM)
    update(imap, {"box_a": A, "box_b": B}, 1.0)
    text = np.stack([IDENTITY["box_b"], IDENTITY["box_a"], IDENTITY["box_c"]]).astype(np.float32)
    labels = imap.label(text, temperature=0.07)
    assert labels.label_indices.tolist() == [1, 0]
    assert (labels.label_probs > 0.9).all()
    np.testing.assert_allclose(labels.scores, 0.9 * labels.label_probs, rtol=1e-5)
    rows, scores, phrase = imap.query(text[:1], k=5)
    assert rows.tolist()[0] == imap.row_of(1) and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert list(rows) == sorted(rows, key=lambda r: -scores[list(rows).index(r)])
    rows, _, _ = imap.query(text[:1], k=5, min_score=0.99)
    assert rows.tolist() == [imap.row_of(1)]
    with pytest.raises(ValueError, match="k must be"):
        imap.query(text, k=0)
    with pytest.raises(ValueError, match="text embeddings"):
        imap.label(text[:, :4], 0.07)


def test_point_rows_by_voxel():
    imap = InstanceMap(DIM)
    update(imap, {"box_a": A, "box_b": B}, 1.0)
    probe = np.array([[0.75, 0.75, 0.5], [2.75, 3.0, 0.8], [3.9, 0.1, 0.0]])
    rows = imap.point_rows(imap.grid.keys(probe)[0])
    assert rows.tolist() == [imap.row_of(0), imap.row_of(1), -1]


# ---------------------------------------------------------------------------------------------
# files


def test_save_load_roundtrip(tmp_path):
    imap = InstanceMap(DIM, embedding_space="space-1")
    update(imap, {"box_a": A, "box_b": B}, 1.0)
    update(imap, {"box_a": A}, 2.0)
    imap.frame_origin = np.array([4_600_000.0, 500_000.0, 0.0])      # a recentred (UTM) map keeps its origin
    path = save_map(imap, tmp_path / "m.map")
    back = load_map(path, embedding_space="space-1")
    np.testing.assert_array_equal(back.frame_origin, imap.frame_origin)
    for name in ("ids", "emb_sum", "weight", "observations", "first_seen", "last_seen", "misses", "box_min",
                 "centroids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(imap, name), err_msg=name)
    assert all(np.array_equal(a, b) for a, b in zip(back.voxels, imap.voxels))
    assert back.grid == imap.grid and back.next_id == imap.next_id and back.cfg == imap.cfg
    assert update(back, {"box_c": ((3, 0.2, 0), (3.5, 0.6, 0.4))}, 3.0).new == [2]   # ids go on
    assert list(tmp_path.iterdir()) == [path]                                        # no temp file left


def test_load_refuses_bad_files(tmp_path):
    imap = InstanceMap(DIM, embedding_space="space-1")
    update(imap, {"box_a": A}, 1.0)
    good = save_map(imap, tmp_path / "good.map")
    with pytest.raises(MapFileError, match="another model"):
        load_map(good, embedding_space="space-2")
    corrupt = tmp_path / "corrupt.map"
    corrupt.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(MapFileError):
        load_map(corrupt)
    garbage = tmp_path / "garbage.map"
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(MapFileError, match="not a readable map"):
        load_map(garbage)
    from safetensors.numpy import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign), metadata={"format": "something.else"})
    with pytest.raises(MapFileError, match="not a folk_ros map"):
        load_map(foreign)
    with pytest.raises(MapFileError, match="no map file"):
        load_map(tmp_path / "missing.map")


def test_kill_during_save_leaves_the_previous_file_readable(tmp_path):
    """A process saving a large map again and again is SIGKILLed; the file always loads."""
    path = tmp_path / "live.map"
    imap = InstanceMap(DIM)
    update(imap, {"box_a": A}, 1.0)
    save_map(imap, path)
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from folk_ros.core.instance_map import InstanceMap
        from folk_ros.core.map_file import save_map
        from folk_ros.core.map_voxels import pack
        m = InstanceMap({DIM})
        m.grid = __import__("folk_ros.core.map_voxels", fromlist=["VoxelGrid"]).VoxelGrid(0.05)
        m.ids = np.arange(200); m.next_id = 200
        cells = np.zeros((40_000, 3), np.int64)
        cells[:, 2] = np.arange(40_000) - 20_000
        m.voxels = [pack(cells + [i, 0, 0]) for i in range(200)]      # valid keys: the file must load
        for name in ("weight", "score_sum", "points_sum", "first_seen", "last_seen"):
            setattr(m, name, np.ones(200))
        m.observations = np.ones(200, np.int64); m.misses = np.zeros(200, np.int64)
        m.emb_sum = np.ones((200, {DIM}), np.float32)
        print("ready", flush=True)
        while True:
            save_map(m, sys.argv[1])
    """)
    for delay in (0.05, 0.2, 0.4):
        proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        back = load_map(path)                        # either the old map or a whole new one
        assert len(back) in (1, 200)


# ---------------------------------------------------------------------------------------------
# change detection


def test_change_detection_grown_scan_unchanged():
    grid = VoxelGrid(0.05)
    det = ChangeDetector(grid, margin=1.0, full_pass_fraction=0.6)
    room = np.concatenate([floor_points((0, 0), (8, 4)), box_points(*A)]).astype(np.float32)
    first_part = room[:, 0] < 4.0

    def detect(xyz):
        keys, inside = grid.keys(xyz)
        change = det.detect(xyz, keys, inside)
        det.commit(change)
        return change

    c = detect(room[first_part])
    assert c.kind == "first" and c.full and c.crop.all()
    grown = detect(room)                                    # the map grew by the half x in [4, 8)
    assert grown.kind == "grown" and not grown.full
    xs = room[grown.crop, 0]
    assert xs.min() >= 2.0 and xs.max() > 7.9               # the new half plus one 1 m cell of margin
    assert not grown.crop[room[:, 0] < 2.0].any()
    assert detect(room).kind == "unchanged"
    without_box = room[~isin_sorted(grid.keys(room)[0], np.unique(grid.keys(box_points(*A))[0]))]
    gone = detect(without_box)                              # the box was taken away
    assert gone.kind == "grown" and not gone.full
    core_cells = np.unique(grid.keys(box_points(*A), 1.0)[0])
    assert isin_sorted(core_cells, gone.core).all()
    far = floor_points((20, 20), (24, 24)).astype(np.float32)
    scan = detect(far)
    assert scan.kind == "scan" and scan.full


def test_region_limits_what_an_update_reobserves():
    imap = InstanceMap(DIM, MapConfig(miss_limit=1))
    update(imap, {"box_a": A, "box_b": B}, 1.0)
    xyz, masks, emb, scores, _ = scene({})
    region = Region(1.0, np.unique(imap.grid.keys(box_points(*A), 1.0)[0]))   # box A's cells only
    r = imap.update(xyz, masks, emb, scores, 2.0, region=region)
    assert r.removed == [0] and imap.ids.tolist() == [1]
