"""Tests of the synthetic ScanNet-style world: catalogue, layout, meshing, rendering, writing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data import scannet200
from training.data.synth_layout import (MAX_OBJECTS, MIN_OBJECTS, THEMES, footprints_overlap, sample_layout)
from training.data.synth_objects import CATALOGUE, category_names, make_object, validate_catalogue
from training.data.synth_render import (build_scene_mesh, fused_clouds, mesh_box, mesh_cylinder, mesh_ellipsoid)
from training.data.synthetic import (SynthConfig, broadcast, generate_scene, main, run, scene_name, scene_seed,
                                     write_scene)

FRAMES = 10
LAYOUT_SEEDS = range(10)


@pytest.fixture(scope="module")
def scene():
    """One generated scene with a 10-frame walk, frames rendered once."""
    mesh, walk, clouds = generate_scene(11, "synth0011_00", FRAMES)
    return mesh, walk, clouds, list(walk)


# ------------------------------------------------------------------ catalogue


def test_catalogue_has_20_scannet200_categories():
    validate_catalogue()
    names = category_names()
    assert len(set(names)) == len(names) >= 20
    for n in names:
        assert scannet200.label_id(n) > 0
    for required in ("chair", "table", "desk", "bed", "couch", "bookshelf", "cabinet", "lamp", "monitor",
                     "trash can", "box", "pillow", "plant", "toilet", "sink", "refrigerator", "door", "window",
                     "picture", "bottle", "cup"):
        assert required in names


@pytest.mark.parametrize("spec", CATALOGUE, ids=lambda s: s.name)
def test_objects_follow_their_size_ranges(spec):
    for seed in range(3):
        m = make_object(spec.name, np.random.default_rng(seed))
        ext = m.hi - m.lo
        # parts stay within the sampled overall size, up to small protrusions (handles, rims, knobs)
        assert (ext <= np.asarray(spec.size_max) + 0.13).all(), (spec.name, ext)
        assert m.lo[2] == pytest.approx(0.0, abs=1e-9)
        assert ext[2] >= spec.size_min[2] - 1e-9


@pytest.mark.parametrize("name", ["chair", "pillow", "picture", "bed"])
def test_make_object_is_deterministic_and_varies(name):
    a = make_object(name, np.random.default_rng(5))
    b = make_object(name, np.random.default_rng(5))
    c = make_object(name, np.random.default_rng(6))
    assert a == b
    assert a != c


# ------------------------------------------------------------------ primitives


def test_primitive_meshes_have_about_2cm_spacing_and_lie_on_the_surface():
    box = mesh_box((0.4, 0.3, 0.2), 0.02)
    assert np.allclose(np.abs(box.v).max(0), (0.2, 0.15, 0.1))
    edges = np.concatenate([box.f[:, [0, 1]], box.f[:, [1, 2]]])
    lengths = np.linalg.norm(box.v[edges[:, 0]] - box.v[edges[:, 1]], axis=1)
    assert lengths.max() <= 0.02 * np.sqrt(2) + 1e-9 and np.median(lengths) > 0.012
    cyl = mesh_cylinder((0.2, 0.2, 0.3), 0.02)
    side = np.abs(cyl.v[:, 2]) < 0.15 - 1e-9
    assert np.allclose(np.linalg.norm(cyl.v[side, :2], axis=1), 0.1)
    ell = mesh_ellipsoid((0.4, 0.2, 0.1), 0.02)
    assert np.allclose(((ell.v / (0.2, 0.1, 0.05)) ** 2).sum(1), 1.0)
    for piece in (box, cyl, ell):
        assert np.allclose(np.linalg.norm(piece.n, axis=1), 1.0)
        assert piece.f.min() >= 0 and piece.f.max() < len(piece.v)


def test_box_normals_point_outward_and_agree_with_winding():
    box = mesh_box((0.3, 0.2, 0.1), 0.05)
    tri = box.v[box.f]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((face_n * tri.mean(1)).sum(1) > 0).all()          # winding normal points away from the centre
    assert ((box.n * box.v).sum(1) > 0).all()


# ------------------------------------------------------------------ layout


def test_footprints_overlap_handles_rotation():
    sq = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    diamond = (sq - 0.5) @ np.array([[c, s], [-s, c]]) * 1.0 + [2.15, 0.5]   # corner reaches x = 1.44
    near = diamond - [0.5, 0]                                              # corner at x = 0.94: overlaps
    touching = sq + [1.0, 0]
    got = footprints_overlap(sq, np.stack([diamond, near, touching, sq + 0.5]))
    assert got.tolist() == [False, True, False, True]


def _cells(p, step=0.01):
    """Flat ids of the 1 cm grid cells whose centres lie inside the object's footprint (shrunk by 2 mm)."""
    fp = p.footprint()
    ix, iy = (np.arange(np.floor(fp[:, k].min() / step), np.ceil(fp[:, k].max() / step)) for k in (0, 1))
    gx, gy = np.meshgrid(ix, iy, indexing="ij")
    pts = np.c_[(gx.ravel() + 0.5) * step, (gy.ravel() + 0.5) * step, np.zeros(gx.size)]
    q = p.to_local(pts)
    lo, hi = p.model.lo + 0.002, p.model.hi - 0.002
    inside = (q[:, 0] >= lo[0]) & (q[:, 0] <= hi[0]) & (q[:, 1] >= lo[1]) & (q[:, 1] <= hi[1])
    return (gx.ravel() * 100_000 + gy.ravel())[inside].astype(np.int64)


@pytest.mark.parametrize("seed", LAYOUT_SEEDS)
def test_layout_counts_and_no_interpenetration(seed):
    layout = sample_layout(np.random.default_rng(seed))
    objs = layout.objects
    assert MIN_OBJECTS <= len(objs) <= MAX_OBJECTS
    assert {p.category for p in objs} <= set(category_names())
    room = layout.room
    assert 3.5 <= room.width <= 7.0 and 3.5 <= room.depth <= 7.0
    # rasterise footprints on a 1 cm grid: no cell under two objects whose height intervals overlap
    # (an object and the one it stands on excepted)
    cells = [_cells(p) for p in objs]
    for i, a in enumerate(objs):
        assert cells[i].size
        za = a.z_range()
        for j in range(i + 1, len(objs)):
            b = objs[j]
            if b.parent == i or a.parent == j:
                continue
            zb = b.z_range()
            if za[0] < zb[1] - 1e-6 and zb[0] < za[1] - 1e-6:
                assert not np.isin(cells[j], cells[i]).any(), (a.category, b.category)
    for p in objs:   # supported objects stand on their parent's surface, inside the room
        if p.parent >= 0:
            tops = [objs[p.parent].to_world(np.array([s.center]))[0, 2] for s in objs[p.parent].model.surfaces]
            assert min(abs(p.position[2] - z) for z in tops) < 1e-6
        fp = p.footprint()
        assert (fp >= -1e-6).all() and (fp <= [room.width + 1e-6, room.depth + 1e-6]).all()


def test_every_theme_places_its_anchors():
    for k, theme in enumerate(sorted(THEMES)):
        layout = sample_layout(np.random.default_rng(100 + k), theme)
        cats = [p.category for p in layout.objects]
        assert layout.theme == theme
        assert "door" in cats
        assert any(a in cats for a in THEMES[theme]["anchors"])


# ------------------------------------------------------------------ mesh


def test_mesh_vertex_count_and_ground_truth(scene):
    mesh = scene[0]
    n = mesh.num_vertices
    assert 50_000 <= n <= 200_000
    assert mesh.vertices.shape == (n, 3) and mesh.colors.shape == (n, 3) and mesh.colors.dtype == np.uint8
    assert mesh.faces.min() >= 0 and mesh.faces.max() < n
    assert (mesh.instance_ids > 0).all()
    for k, name in mesh.instance_labels.items():
        sem = np.unique(mesh.semantic_ids[mesh.instance_ids == k])
        assert sem.tolist() == [scannet200.label_id(name)], (k, name, sem)
    assert sorted(mesh.instance_labels.values()).count("wall") == 4
    assert list(mesh.instance_labels.values()).count("floor") == 1
    assert set(np.unique(mesh.instance_ids)) == set(mesh.instance_labels)
    # faces never join two instances; segments never straddle two instances
    fi = mesh.instance_ids[mesh.faces]
    assert (fi == fi[:, :1]).all()
    pairs = np.unique(np.c_[mesh.segments, mesh.instance_ids], axis=0)
    assert len(np.unique(pairs[:, 0])) == len(pairs)
    assert len(pairs) > len(mesh.instance_labels)        # an over-segmentation, not one segment per instance


@pytest.mark.parametrize("seed", [0, 3])
def test_vertex_count_in_range(seed):
    rng = np.random.default_rng(seed)
    mesh = build_scene_mesh(sample_layout(rng), "x", rng)
    assert 50_000 <= mesh.num_vertices <= 200_000


def test_budget_coarsens_large_meshes():
    rng = np.random.default_rng(0)
    layout = sample_layout(rng)
    mesh = build_scene_mesh(layout, "x", np.random.default_rng(1), max_vertices=60_000)
    assert mesh.num_vertices <= 60_000


# ------------------------------------------------------------------ determinism


def test_same_seed_same_scene_different_seed_different(scene):
    mesh, walk, clouds, frames = scene
    mesh2, walk2, clouds2 = generate_scene(11, "synth0011_00", FRAMES)
    for name in ("vertices", "colors", "faces", "semantic_ids", "instance_ids", "segments"):
        assert np.array_equal(getattr(mesh, name), getattr(mesh2, name)), name
    assert np.array_equal(walk.poses, walk2.poses)
    f2 = walk2[3]
    assert np.array_equal(frames[3].color, f2.color) and np.array_equal(frames[3].depth, f2.depth)
    assert np.array_equal(frames[3].instance, f2.instance)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(clouds, clouds2))
    mesh3, walk3, _ = generate_scene(12, "synth0011_00", FRAMES)
    assert mesh3.vertices.shape != mesh.vertices.shape or not np.array_equal(mesh3.vertices, mesh.vertices)
    assert not np.array_equal(walk3.poses, walk.poses)


def test_scene_seeds_are_distinct_and_stable():
    seeds = [scene_seed(0, i) for i in range(100)] + [scene_seed(1, i) for i in range(100)]
    assert len(set(seeds)) == 200
    assert scene_seed(3, 7) == scene_seed(3, 7)
    assert scene_name(7) == "synth0007_00"


# ------------------------------------------------------------------ camera and rendering


def test_camera_walk(scene):
    mesh, walk, _, frames = scene
    poses = walk.poses
    r = poses[:, :3, :3]
    assert np.allclose(r @ r.transpose(0, 2, 1), np.eye(3), atol=1e-9)
    assert np.allclose(np.linalg.det(r), 1.0)
    eye = poses[:, :3, 3]
    room = walk.layout.room
    assert (eye[:, 2] >= 1.2 - 1e-9).all() and (eye[:, 2] <= 1.6 + 1e-9).all()
    assert (eye[:, 0] > 0.5).all() and (eye[:, 0] < room.width - 0.5).all()
    assert (eye[:, 1] > 0.5).all() and (eye[:, 1] < room.depth - 0.5).all()
    assert (poses[:, 2, 1] < 0.95).all()        # image "down" (camera +y) points mostly down: not rolled over
    assert [f.stamp for f in frames] == pytest.approx([i / 30.0 for i in range(FRAMES)])


def test_rendered_frames_agree_with_projected_ground_truth(scene):
    """>= 95 % of the vertices visible in a frame carry the instance id of the pixel they project to."""
    mesh, walk, _, frames = scene
    k = walk.intrinsics
    agree = total = 0
    for f in frames:
        assert f.color.shape == (480, 640, 3) and f.color.dtype == np.uint8
        assert f.depth.dtype == np.float32 and f.instance.dtype == np.int32
        assert (f.depth > 0).mean() > 0.9          # a closed room (open only at the ceiling)
        w2c = np.linalg.inv(f.pose)
        p = mesh.vertices @ w2c[:3, :3].T + w2c[:3, 3]
        z = p[:, 2]
        front = z > 0.05
        zs = np.where(front, z, 1.0)
        u = np.round(k[0, 0] * p[:, 0] / zs + k[0, 2]).astype(int)
        v = np.round(k[1, 1] * p[:, 1] / zs + k[1, 2]).astype(int)
        ok = front & (u >= 0) & (u < f.width) & (v >= 0) & (v < f.height)
        d = np.zeros_like(z)
        d[ok] = f.depth[v[ok], u[ok]]
        vis = ok & (d > 0) & (np.abs(d - z) <= 0.02)
        assert vis.sum() > 2000
        agree += int((f.instance[v[vis], u[vis]] == mesh.instance_ids[vis]).sum())
        total += int(vis.sum())
        # colours of visible vertices match the rendered pixel (barycentric interpolation of vertex colours)
        diff = np.abs(f.color[v[vis], u[vis]].astype(int) - mesh.colors[vis].astype(int)).mean()
        assert diff < 25
    assert agree / total >= 0.95


def test_fused_clouds_grow_along_the_walk(scene):
    mesh, walk, clouds, _ = scene
    assert len(clouds) == 1 and clouds[0][0] == pytest.approx((FRAMES - 1) / 30.0)
    many = fused_clouds(walk, every=3)
    stamps = [c[0] for c in many]
    assert stamps == pytest.approx([2 / 30, 5 / 30, 8 / 30, 9 / 30])
    sizes = [len(c[1]) for c in many]
    assert sizes == sorted(sizes) and sizes[0] > 1000
    assert np.array_equal(many[-1][1], clouds[0][1])
    xyz, rgb = many[-1][1], many[-1][2]
    assert xyz.dtype == np.float32 and rgb.dtype == np.uint8 and xyz.shape == rgb.shape
    assert len(xyz) < mesh.num_vertices


# ------------------------------------------------------------------ writing


def test_broadcast_feeds_every_consumer_and_reraises():
    got_a, got_b = [], []
    broadcast(range(50), [got_a.extend, got_b.extend], depth=2)
    assert got_a == got_b == list(range(50))

    def fail(it):
        next(it)
        raise RuntimeError("consumer broke")

    with pytest.raises(RuntimeError, match="consumer broke"):
        broadcast(range(50), [got_a.extend, fail], depth=2)


def test_write_scene_roundtrip_and_cli_skips_complete_scenes(tmp_path):
    from training.data.bag_reader import read_bag_clouds, read_bag_frames
    from training.data.scannet import read_frames, read_scene_mesh

    mesh, walk, clouds = generate_scene(scene_seed(0, 0), scene_name(0), 3,
                                        SynthConfig(width=160, height=120, cloud_every=2))
    write_scene(tmp_path, mesh, walk, clouds, bag=True, meta={"frames": 3})
    back = read_scene_mesh(tmp_path / mesh.scene_id)
    assert np.array_equal(back.gt_encoding(), mesh.gt_encoding())
    frames = list(read_frames(tmp_path / mesh.scene_id, every=1, with_instance=True))
    assert len(frames) == 3 and np.abs(frames[1].depth - walk[1].depth).max() <= 0.0006
    assert np.array_equal(frames[1].instance, walk[1].instance)
    bag_frames = list(read_bag_frames(tmp_path / "bags" / mesh.scene_id))
    assert len(bag_frames) == 3
    assert len(list(read_bag_clouds(tmp_path / "bags" / mesh.scene_id))) == len(clouds) == 2

    out = tmp_path / "run"
    argv = ["--scenes", "2", "--seed", "0", "--out", str(out), "--frames", "2", "--no-bag"]
    summary = run(argv)
    assert summary["scenes"] == ["synth0000_00", "synth0001_00"] and summary["frames"] == 4
    assert summary["instances_per_class"]["wall"] == 8
    ply = out / "synth0000_00" / "synth0000_00_vh_clean_2.ply"
    mtime = ply.stat().st_mtime_ns
    assert json.loads((out / "summary.json").read_text())["num_scenes"] == 2
    main(argv)                                             # a re-run skips complete scenes
    assert ply.stat().st_mtime_ns == mtime
    # the CLI's scene 0 is the scene generated above
    assert np.array_equal(read_scene_mesh(out / "synth0000_00").vertices, back.vertices)
