"""Tests of multi-room apartments of the synthetic world: placement, mesh, room-by-room walk, clouds, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data.synth_apartment import (ROOM_GAP, Apartment, grid_shape, merge_meshes, place_rooms,
                                           sample_apartment, split_frames)
from training.data.synth_layout import THEMES
from training.data.synth_render import fused_clouds
from training.data.synthetic import (SynthConfig, apartment_config, generate_apartment, generate_scene, main,
                                     run, scene_name, scene_seed)

SEED = 5
FRAMES = 8                      # 4 per room
# coarse and small: the structure of an apartment, not its density, is under test here
SMALL = SynthConfig(width=160, height=120, spacing=0.05, structure_spacing=0.08, cloud_every=FRAMES // 2)


@pytest.fixture(scope="module")
def apartment():
    """A 2-room apartment with an 8-frame walk and a fused cloud after each room."""
    mesh, walk, clouds = generate_apartment(SEED, 2, FRAMES, SMALL)
    return mesh, walk, clouds


def _void(xyz: np.ndarray) -> np.ndarray:
    """(n,) rows of a float32 (n, 3) array as opaque bytes, for set membership."""
    return np.ascontiguousarray(xyz, dtype=np.float32).view(np.dtype((np.void, 12))).ravel()


def _gaps(bounds: np.ndarray) -> np.ndarray:
    """(R, R) separation of floor rectangles: max over x, y of the gap between them (negative: overlap)."""
    lo, hi = bounds[:, 0], bounds[:, 1]
    gap = np.maximum(lo[None] - hi[:, None], lo[:, None] - hi[None])     # (R, R, 2)
    return gap.max(-1)


# ------------------------------------------------------------------ placement


def test_grid_and_frame_split():
    assert np.array_equal(place_rooms([[4.0, 5.0]]), [[0.0, 0.0]])      # one room stays where it was
    assert [grid_shape(r) for r in (1, 3, 4, 7, 8)] == [(1, 1), (1, 3), (2, 2), (2, 4), (2, 4)]
    assert split_frames(10, 3) == [4, 3, 3] and sum(split_frames(400, 8)) == 400
    with pytest.raises(ValueError, match="one frame per room"):
        split_frames(2, 3)
    with pytest.raises(ValueError, match="rooms"):
        grid_shape(0)
    with pytest.raises(ValueError, match="frame per room"):
        SynthConfig(num_frames=3, rooms=4)


@pytest.mark.parametrize("rooms", [2, 5, 8])
def test_rooms_do_not_overlap_and_neighbours_follow_each_other(rooms):
    rng = np.random.default_rng(rooms)
    sizes = rng.uniform(3.5, 7.0, (rooms, 2))
    origins = place_rooms(sizes)
    bounds = np.stack([origins, origins + sizes], axis=1)
    gaps = _gaps(bounds)
    off = ~np.eye(rooms, dtype=bool)
    assert (gaps[off] >= ROOM_GAP - 1e-9).all()                     # never overlapping, a partition apart
    for k in range(rooms - 1):                                     # the walk's next room is a neighbour
        assert gaps[k, k + 1] == pytest.approx(ROOM_GAP)


def test_sampled_apartment_rooms_apart_same_height_objects_inside():
    apt = sample_apartment(np.random.default_rng(1), 6)
    assert isinstance(apt, Apartment) and len(apt.rooms) == 6
    assert len(set(apt.themes[:len(THEMES)])) == len(THEMES)        # every theme before any repeats
    gaps = _gaps(apt.bounds())
    assert (gaps[~np.eye(6, dtype=bool)] >= ROOM_GAP - 1e-9).all()
    heights = {lay.room.height for lay in apt.rooms}
    assert len(heights) == 1
    for lay in apt.rooms:
        for p in lay.objects:
            fp = p.footprint()
            assert (fp >= -1e-6).all() and (fp <= [lay.room.width + 1e-6, lay.room.depth + 1e-6]).all()
            assert p.z_range()[1] <= lay.room.height - 0.05 + 1e-9
    mid = apt.bounds().mean(1)
    assert apt.room_of(mid).tolist() == list(range(6))
    assert apt.room_of(np.array([[-100.0, -100.0]])).tolist() == [-1]


# ------------------------------------------------------------------ mesh


def test_instance_ids_unique_and_each_instance_in_one_room(apartment):
    mesh, walk, _ = apartment
    apt = walk.layout
    ids = np.unique(mesh.instance_ids)
    assert set(ids.tolist()) == set(mesh.instance_labels) and ids.min() == 1
    assert len(mesh.instance_labels) == 2 * 5 + apt.num_objects    # floor + 4 walls per room, then objects
    names = list(mesh.instance_labels.values())
    assert names.count("floor") == 2 and names.count("wall") == 8
    room = apt.room_of(mesh.vertices)
    assert (room >= 0).all()
    pairs = np.unique(np.c_[mesh.instance_ids, room], axis=0)
    assert len(pairs) == len(ids)                                  # no instance spans two rooms
    assert np.bincount(pairs[:, 1]).tolist() == [5 + len(lay.objects) for lay in apt.rooms]
    fi = mesh.instance_ids[mesh.faces]
    assert (fi == fi[:, :1]).all() and mesh.faces.max() < mesh.num_vertices
    seg = np.unique(np.c_[mesh.segments, mesh.instance_ids], axis=0)
    assert len(np.unique(seg[:, 0])) == len(seg)                   # segments never straddle instances


def test_merge_meshes_offsets_ids(apartment):
    mesh = apartment[0]
    twice = merge_meshes([mesh, mesh], np.array([[0.0, 0.0], [100.0, 0.0]]), "x")
    n, k = mesh.num_vertices, max(mesh.instance_labels)
    assert np.array_equal(twice.instance_ids[n:], mesh.instance_ids + k)
    assert np.allclose(twice.vertices[n:, 0], mesh.vertices[:, 0] + 100.0)
    assert len(np.unique(twice.segments)) == 2 * len(np.unique(mesh.segments))


# ------------------------------------------------------------------ walk and fused clouds


def test_walk_goes_room_by_room(apartment):
    _, walk, _ = apartment
    eye_room = walk.layout.room_of(walk.poses[:, :3, 3])
    assert eye_room.tolist() == [0] * 4 + [1] * 4
    assert [f.stamp for f in walk[:2]] == pytest.approx([0.0, 1 / 30])


def test_clouds_grow_monotonically(apartment):
    _, _, clouds = apartment
    assert len(clouds) == 2
    stamps = [c[0] for c in clouds]
    assert stamps == sorted(stamps) and stamps[-1] == pytest.approx((FRAMES - 1) / 30)
    for (_, a, ca), (_, b, cb) in zip(clouds, clouds[1:]):
        assert len(b) > len(a)
        assert np.isin(_void(a), _void(b)).all()                   # each cloud holds the previous one
    for _, xyz, rgb in clouds:
        assert xyz.dtype == np.float32 and rgb.dtype == np.uint8 and xyz.shape == rgb.shape


def test_second_room_appears_only_once_the_walk_reaches_it(apartment):
    _, walk, clouds = apartment
    apt = walk.layout
    per_frame = fused_clouds(walk, every=1, stride=SMALL.cloud_stride)
    in_second = [int((apt.room_of(xyz) == 1).sum()) for _, xyz, _ in per_frame]
    assert in_second[:4] == [0, 0, 0, 0]                           # closed rooms: nothing seen through walls
    assert min(in_second[4:]) > 500
    first, last = clouds
    assert (apt.room_of(first[1]) == 0).all()
    assert np.bincount(apt.room_of(last[1]), minlength=2).min() > 500


# ------------------------------------------------------------------ one room = today's scene


def test_one_room_apartment_is_the_single_room_scene():
    cfg = SynthConfig(width=160, height=120, cloud_every=3)
    mesh, walk, clouds = generate_scene(SEED, "synth0005_00", 6, cfg)
    amesh, awalk, aclouds = generate_apartment(SEED, 1, 6, cfg, scene_id="synth0005_00")
    for name in ("vertices", "colors", "faces", "semantic_ids", "instance_ids", "segments"):
        assert np.array_equal(getattr(mesh, name), getattr(amesh, name)), name
    assert mesh.instance_labels == amesh.instance_labels
    assert np.array_equal(walk.poses, awalk.poses)
    assert len(clouds) == len(aclouds) == 2
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
               for a, b in zip(clouds, aclouds))
    # a bigger apartment starts with the same room
    two = sample_apartment(np.random.default_rng(np.random.SeedSequence(SEED).spawn(3)[0]), 2)
    assert two.rooms[0] == walk.layout


def test_apartment_config_is_denser():
    cfg = apartment_config(rooms=8, num_frames=400)
    assert cfg.spacing < SynthConfig().spacing and cfg.structure_spacing < SynthConfig().structure_spacing
    assert cfg.rooms == 8 and cfg.num_frames == 400 and cfg.max_vertices >= SynthConfig().max_vertices


# ------------------------------------------------------------------ CLI


def test_cli_writes_the_apartment_and_its_bag_and_rooms_1_is_unchanged(tmp_path):
    from training.data.bag_reader import read_bag_clouds, read_bag_frames
    from training.data.scannet import read_scene_mesh

    out = tmp_path / "apt"
    summary = run(["--scenes", "1", "--rooms", "2", "--frames", "4", "--seed", "0", "--out", str(out),
                   "--cloud-every", "2"])
    sid = scene_name(0, rooms=2)
    assert sid == "apt0000_00" and summary["scenes"] == [sid] and summary["frames"] == 4
    meta = json.loads((out / sid / "synth_meta.json").read_text())
    assert meta["rooms"] == 2 and meta["theme"] == "apartment" and meta["bag"] and meta["clouds"] == 2
    assert meta["cloud_points"] == sorted(meta["cloud_points"])
    mesh = read_scene_mesh(out / sid)
    assert mesh.num_vertices == meta["vertices"] and sorted(mesh.instance_labels.values()).count("floor") == 2
    bag = out / "bags" / sid
    assert len(list(read_bag_frames(bag))) == 4
    back = list(read_bag_clouds(bag))
    assert [len(c[1]) for c in back] == meta["cloud_points"]

    single = tmp_path / "single"
    main(["--scenes", "1", "--rooms", "1", "--frames", "2", "--seed", "0", "--out", str(single), "--no-bag"])
    ref, _, _ = generate_scene(scene_seed(0, 0), scene_name(0), 2)
    got = read_scene_mesh(single / "synth0000_00")
    assert np.array_equal(got.vertices, ref.vertices) and np.array_equal(got.gt_encoding(), ref.gt_encoding())
