"""LiveMap over the real Segmenter (UNTRAINED test bundle: labels meaningless, plumbing real): only what
changed is segmented, unchanged regions keep their instances, per-point lookups, queries, files."""

from __future__ import annotations

import numpy as np
import pytest

from folk_ros.core.cloud import PointCloud
from folk_ros.core.map_config import MapConfig
from folk_ros.core.map_file import MapFileError
from folk_ros.core.live_map import LiveMap
from folk_ros.core.segmenter import Segmenter
from test.fixtures import VOCABULARY, box_room_cloud, make_untrained_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    bundle = make_untrained_bundle(tmp_path_factory.mktemp("bundle"))
    return Segmenter.from_bundle(bundle, device="cpu", score_threshold=0.0, min_points=5)


def two_rooms() -> tuple[PointCloud, PointCloud]:
    """The box room, and the box room plus a second one 6 m away (a fused map that grew)."""
    room, _ = box_room_cloud(seed=0)
    other, _ = box_room_cloud(seed=1)
    xyz = np.concatenate([room.xyz, other.xyz + np.float32([6.0, 0.0, 0.0])])
    return room, PointCloud.from_arrays(xyz, np.concatenate([room.rgb, other.rgb]))


def test_only_the_changed_region_is_segmented(segmenter):
    live = LiveMap(segmenter, MapConfig(min_voxels=1))
    room, grown = two_rooms()
    first = live.update(room, 1.0)
    assert first.kind == "first" and first.full and first.segmented_points == len(room)
    ids, voxels = live.map.ids.copy(), [v.copy() for v in live.map.voxels]
    assert len(ids) > 0 and first.result.new == ids.tolist()

    same = live.update(room, 2.0)                           # nothing changed: nothing segmented
    assert same.kind == "unchanged" and same.segmented_points == 0 and same.result is None
    assert live.map.ids.tolist() == ids.tolist()

    more = live.update(grown, 3.0)                          # only the new room (plus margin) is segmented
    assert more.kind == "grown" and not more.full
    assert 0 < more.segmented_points < len(grown) and more.changed_voxels < more.voxels
    crop_x = grown.xyz[:, 0] >= 6.0 - 2 * live.cfg.margin
    assert more.segmented_points <= crop_x.sum()
    for i, v in zip(ids, voxels):                            # the first room's instances are untouched
        row = live.map.row_of(int(i))
        assert np.array_equal(live.map.voxels[row], v) and live.map.last_seen[row] == 1.0
    assert set(more.result.new).isdisjoint(ids.tolist()) and all(i > ids.max() for i in more.result.new)
    assert {"change", "proposals", "student", "associate", "total"} <= set(more.timings)


def test_point_lookups_agree_with_the_voxels(segmenter):
    live = LiveMap(segmenter, MapConfig(min_voxels=1))
    room, _ = two_rooms()
    live.update(room, 1.0)
    rows = np.arange(len(live.map))
    sets = live.instance_points(room.xyz, rows)
    keys, _ = live.map.grid.keys(room.xyz)
    for r, pts in zip(rows, sets):
        want = np.flatnonzero(np.isin(keys, live.map.voxels[r]))
        assert np.array_equal(pts, want)
    owner = live.point_instances(room.xyz)
    for p in np.flatnonzero(owner >= 0)[:200]:
        assert p in sets[owner[p]]
    assert (owner[np.isin(keys, np.concatenate(live.map.voxels), invert=True)] == -1).all()


def test_label_query_save_load(segmenter, tmp_path):
    live = LiveMap(segmenter, MapConfig(min_voxels=1))
    room, _ = two_rooms()
    live.update(room, 1.0)
    labels = live.label(VOCABULARY)
    assert labels.label_indices.shape == (len(live.map),) and (labels.label_indices < len(VOCABULARY)).all()
    hits = live.query(["a red box", "a blue box"], k=2, vocabulary=VOCABULARY)
    assert 1 <= len(hits) <= 2 and all(0.0 <= h.score <= 1.0 for h in hits)
    assert hits == sorted(hits, key=lambda h: -h.score)
    assert all(h.instance_id == live.map.ids[h.row] for h in hits)
    with pytest.raises(ValueError, match="phrases"):
        live.query([], k=1)
    with pytest.raises(ValueError, match="phrases"):
        live.query("a red box", k=1)
    path = live.save(tmp_path / "room.map")
    other = LiveMap(segmenter, MapConfig(min_voxels=1))
    other.load(path)
    assert other.map.ids.tolist() == live.map.ids.tolist() and other.map.next_id == live.map.next_id
    assert other.update(room, 2.0).kind == "first"          # after a load the next cloud is compared with nothing
    student = segmenter.student
    try:                                                     # another student: another embedding space
        segmenter.student = type(student)(student.cfg)
        with pytest.raises(MapFileError, match="another model"):
            LiveMap(segmenter).load(path)
    finally:
        segmenter.student = student


def test_reset_forgets_instances_not_ids(segmenter):
    live = LiveMap(segmenter, MapConfig(min_voxels=1))
    room, _ = two_rooms()
    before = live.update(room, 1.0).result.new
    live.reset()
    assert len(live.map) == 0
    after = live.update(room, 2.0)
    assert after.kind == "first" and min(after.result.new) > max(before)


def test_a_cloud_prepared_before_a_reset_is_dropped(segmenter):
    """The node segments outside its map lock (prepare) and folds in under it (commit); a reset between
    the two must not leave a map holding only the changed part of that cloud."""
    live = LiveMap(segmenter, MapConfig(min_voxels=1))
    room, grown = two_rooms()
    live.update(room, 1.0)
    prepared = live.prepare(grown)
    assert prepared.embedded is not None and not prepared.change.full
    live.reset()
    assert live.commit(prepared, 2.0).kind == "discarded" and len(live.map) == 0
    assert live.update(grown, 3.0).kind == "first"          # segmented whole again
