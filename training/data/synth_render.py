"""Meshing, camera walk and RGB-D ray casting of the synthetic ScanNet-style world.

- :func:`build_scene_mesh`: every primitive is subdivided so that vertices are ~2 cm apart
  (floor and walls coarser), with per-vertex colour (albedo x texture x baked Lambertian light),
  ScanNet200 label, instance id and an over-segmentation that never straddles two instances.
  Surfaces hidden inside or under other parts (a table top under a keyboard, the wall behind a
  picture, the floor under a cabinet) are dropped, like a reconstruction, which holds no hidden faces.
- :func:`camera_path`: a smooth closed walk at 1.2-1.6 m looking across the room at objects;
  (T, 4, 4) camera-to-world poses of OpenCV cameras (x right, y down, z forward).
- :class:`Renderer`: one ``open3d.t.geometry.RaycastingScene`` cast per frame for all pixels; depth
  in metres (z along the optical axis), colour interpolated from vertex colours with the hit's
  barycentric coordinates, per-pixel instance id from the hit triangle.
- :class:`RenderedWalk`: the frames of a walk as a lazy, re-iterable sequence of :class:`Frame`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from training.data.scannet200 import label_id
from training.data.synth_layout import Layout, Room
from training.data.synth_objects import Part
from training.data.types import Frame, SceneMesh

if TYPE_CHECKING:
    from training.data.synth_apartment import Apartment

# ScanNet depth-camera intrinsics (640 x 480).
WIDTH, HEIGHT = 640, 480
INTRINSICS = np.array([[577.870605, 0.0, 319.5], [0.0, 577.870605, 239.5], [0.0, 0.0, 1.0]])
FPS = 30.0

OBJECT_SPACING = 0.02      # m between neighbouring vertices on objects
STRUCTURE_SPACING = 0.035  # m on floor and walls
MAX_VERTICES = 200_000
COVER_TOL = 0.0015         # m: a vertex this close to the inside of another part is hidden
SEGMENT_CELL = 0.4         # m: object over-segmentation grid
STRUCTURE_CELL = 0.5       # m: floor / wall over-segmentation grid


# --------------------------------------------------------------------------------------
# Primitive meshing (part frame: centred at the origin)
# --------------------------------------------------------------------------------------

@dataclass
class _Piece:
    """A mesh fragment: vertices (n, 3), normals (n, 3), faces (m, 3) int64 local indices."""

    v: np.ndarray
    n: np.ndarray
    f: np.ndarray


def _grid_faces(nu: int, nv: int, offset: int = 0, wrap_v: bool = False) -> np.ndarray:
    """(2 (nu-1) nv', 3) triangles of an nu x nv vertex grid (index i * nv + j); CCW when u x v is the normal."""
    i, j = np.meshgrid(np.arange(nu - 1), np.arange(nv if wrap_v else nv - 1), indexing="ij")
    i, j = i.ravel(), j.ravel()
    j1 = (j + 1) % nv
    a, b, c, d = i * nv + j, (i + 1) * nv + j, (i + 1) * nv + j1, i * nv + j1
    return np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).astype(np.int64) + offset


def _n(length: float, spacing: float, minimum: int = 2) -> int:
    return max(minimum, int(np.ceil(length / spacing)) + 1)


def _merge(pieces: list[_Piece]) -> _Piece:
    if not pieces:
        return _Piece(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3), np.int64))
    offs = np.cumsum([0] + [len(p.v) for p in pieces[:-1]])
    return _Piece(np.concatenate([p.v for p in pieces]), np.concatenate([p.n for p in pieces]),
                  np.concatenate([p.f + o for p, o in zip(pieces, offs)]))


def _rect(center, u_vec, v_vec, lu: float, lv: float, spacing: float) -> _Piece:
    """A rectangle grid spanned by unit vectors u, v (normal u x v) with side lengths lu, lv."""
    nu, nv = _n(lu, spacing), _n(lv, spacing)
    su, sv = np.meshgrid(np.linspace(-lu / 2, lu / 2, nu), np.linspace(-lv / 2, lv / 2, nv), indexing="ij")
    u_vec, v_vec = np.asarray(u_vec, float), np.asarray(v_vec, float)
    v = np.asarray(center, float) + su.reshape(-1, 1) * u_vec + sv.reshape(-1, 1) * v_vec
    normal = np.cross(u_vec, v_vec)
    return _Piece(v, np.broadcast_to(normal, v.shape).copy(), _grid_faces(nu, nv))


def mesh_box(size, spacing: float, drop_bottom: bool = False) -> _Piece:
    """Six grid faces of a box of full extents ``size`` centred at the origin (bottom face optional)."""
    size = np.asarray(size, float)
    pieces = []
    for a in range(3):
        u, v = (a + 1) % 3, (a + 2) % 3
        for s in (1.0, -1.0):
            if drop_bottom and a == 2 and s < 0:
                continue
            c = np.zeros(3)
            c[a] = s * size[a] / 2
            eu, ev = np.eye(3)[u], np.eye(3)[v]
            if s > 0:
                pieces.append(_rect(c, eu, ev, size[u], size[v], spacing))
            else:
                pieces.append(_rect(c, ev, eu, size[v], size[u], spacing))
    return _merge(pieces)


def _disc(radii, z: float, scale: float, up: bool, n_t: int, spacing: float) -> _Piece:
    """An elliptic disc of radii ``radii * scale`` at height z, rings ~spacing apart, normal +-z."""
    rmax = max(radii) * scale
    n_r = max(1, int(np.ceil(rmax / spacing)))
    t = np.linspace(0, 2 * np.pi, n_t, endpoint=False)
    f = (np.arange(1, n_r + 1) / n_r)[:, None]
    ring = np.stack([(f * np.cos(t) * radii[0] * scale).ravel(), (f * np.sin(t) * radii[1] * scale).ravel(),
                     np.full(n_r * n_t, z)], 1)
    v = np.concatenate([[[0.0, 0.0, z]], ring])
    jj = np.arange(n_t)
    fan = np.stack([np.zeros(n_t, np.int64), 1 + jj, 1 + (jj + 1) % n_t], 1)
    faces = [fan]
    if n_r > 1:
        faces.append(_grid_faces(n_r, n_t, offset=1, wrap_v=True))
    faces = np.concatenate(faces)
    if not up:
        faces = faces[:, ::-1]
    normal = np.array([0.0, 0.0, 1.0 if up else -1.0])
    return _Piece(v, np.broadcast_to(normal, v.shape).copy(), faces)


def mesh_cylinder(size, spacing: float, taper: float = 1.0, drop_bottom: bool = False) -> _Piece:
    """Elliptic frustum along z inside the box ``size`` (centred at the origin); top radius = taper x bottom."""
    sx, sy, h = (float(x) for x in size)
    scale_b = 1.0 / max(1.0, taper)                 # bottom radius scale so that the widest ring fits the box
    rb = np.array([sx / 2, sy / 2]) * scale_b
    rmax = max(sx, sy) / 2
    n_t = max(8, int(np.ceil(2 * np.pi * rmax / spacing)))
    n_z = _n(h * np.sqrt(1 + ((taper - 1) * rb.max() / h) ** 2), spacing)
    t = np.linspace(0, 2 * np.pi, n_t, endpoint=False)
    z = np.linspace(0, h, n_z)
    k = 1 + (taper - 1) * z / h                       # radius scale along the height
    zz, tt = np.meshgrid(z, t, indexing="ij")
    kk = np.meshgrid(k, t, indexing="ij")[0]
    v = np.stack([(kk * np.cos(tt) * rb[0]).ravel(), (kk * np.sin(tt) * rb[1]).ravel(), zz.ravel() - h / 2], 1)
    nrm = np.stack([np.cos(tt).ravel() / rb[0], np.sin(tt).ravel() / rb[1],
                    np.full(tt.size, -(taper - 1) / h)], 1)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    pieces = [_Piece(v, nrm, _grid_faces(n_z, n_t, wrap_v=True)[:, ::-1])]   # z x theta points inward: flip
    if taper > 1e-3:
        pieces.append(_disc(rb, h / 2, taper, True, n_t, spacing))
    if not drop_bottom:
        pieces.append(_disc(rb, -h / 2, 1.0, False, n_t, spacing))
    return _merge(pieces)


def mesh_ellipsoid(size, spacing: float) -> _Piece:
    """Ellipsoid inscribed in the box ``size`` centred at the origin (UV sphere with two poles)."""
    a = np.asarray(size, float) / 2
    n_lon = max(8, int(np.ceil(2 * np.pi * a[:2].max() / spacing)))
    n_lat = max(3, int(np.ceil(np.pi * a.mean() / spacing)) - 1)
    phi = np.linspace(0, np.pi, n_lat + 2)[1:-1]
    t = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    pp, tt = np.meshgrid(phi, t, indexing="ij")
    unit = np.stack([(np.sin(pp) * np.cos(tt)).ravel(), (np.sin(pp) * np.sin(tt)).ravel(), np.cos(pp).ravel()], 1)
    unit = np.concatenate([[[0, 0, 1.0]], unit, [[0, 0, -1.0]]])
    v = unit * a
    nrm = v / a**2
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    jj = np.arange(n_lon)
    last = 1 + n_lat * n_lon
    top = np.stack([np.zeros(n_lon, np.int64), 1 + jj, 1 + (jj + 1) % n_lon], 1)
    bot = np.stack([np.full(n_lon, last), 1 + (n_lat - 1) * n_lon + (jj + 1) % n_lon, 1 + (n_lat - 1) * n_lon + jj], 1)
    body = _grid_faces(n_lat, n_lon, offset=1, wrap_v=True)
    return _Piece(v, nrm, np.concatenate([top, body, bot]))


_CYCLIC = {"z": (0, 1, 2), "x": (1, 2, 0), "y": (2, 0, 1)}   # built axes -> part-frame axes


def mesh_part(part: Part, spacing: float, on_ground: bool) -> _Piece:
    """Mesh one part in the object frame; the bottom face is dropped when it rests on the ground plane."""
    drop = on_ground and part.lo[2] <= 1e-6
    if part.kind == "box":
        p = mesh_box(part.size, spacing, drop)
    elif part.kind == "ellipsoid":
        p = mesh_ellipsoid(part.size, spacing)
    else:
        perm = _CYCLIC[part.axis]
        built = np.asarray(part.size)[list(perm)]   # built extents (radial a, radial b, height)
        p = mesh_cylinder(built, spacing, part.taper, drop and part.axis == "z")
        out_v, out_n = np.empty_like(p.v), np.empty_like(p.n)
        out_v[:, perm], out_n[:, perm] = p.v, p.n
        p = _Piece(out_v, out_n, p.f)
    p.v = p.v + np.asarray(part.center)
    return p


# --------------------------------------------------------------------------------------
# Textures and light
# --------------------------------------------------------------------------------------

def texture_albedo(q: np.ndarray, size, color, color2, texture: str, scale: float, seed: int) -> np.ndarray:
    """(n, 3) albedo in [0, 1] at part-frame points ``q`` (n, 3) measured from the part's lower corner."""
    rng = np.random.default_rng(seed)
    c1, c2 = np.asarray(color, float), np.asarray(color2, float)
    order = np.argsort(np.asarray(size))[::-1]            # axes by decreasing extent
    a, b = q[:, order[0]], q[:, order[1]]
    if texture == "plain":
        out = np.broadcast_to(c1, q.shape).copy()
    elif texture == "grain":   # wood: bands across the longest axis, warped along it
        ph = rng.uniform(0, 2 * np.pi, 2)
        f = np.sin(2 * np.pi * (b / (0.25 * scale) + 0.25 * np.sin(2 * np.pi * a / (3 * scale) + ph[0])) + ph[1])
        out = c1 * (1 + 0.09 * f)[:, None]
    elif texture == "noise":   # mottled fabric / plaster: a few random plane waves
        w = rng.normal(size=(4, 3)) * (2 * np.pi / scale)
        ph = rng.uniform(0, 2 * np.pi, 4)
        f = np.sin(q @ w.T + ph).mean(1)
        out = c1 * (1 + 0.2 * f)[:, None]
    elif texture == "stripes":
        m = (np.floor(a / scale) % 2)[:, None]
        out = c1 * (1 - m) + c2 * m
    elif texture == "checker":
        m = ((np.floor(a / scale) + np.floor(b / scale)) % 2)[:, None]
        out = c1 * (1 - m) + c2 * m
    else:
        raise ValueError(f"unknown texture {texture!r}")
    out = out + rng.normal(0, 0.012, out.shape)
    return np.clip(out, 0, 1)


def shade(albedo: np.ndarray, normals: np.ndarray, points: np.ndarray, room: Room, rng: np.random.Generator,
          ambient: float = 0.42) -> np.ndarray:
    """(n, 3) uint8 colours: albedo x (ambient + directional Lambert + a ceiling point light with falloff)."""
    az = rng.uniform(0, 2 * np.pi)
    sun = np.array([0.5 * np.cos(az), 0.5 * np.sin(az), 1.0])
    sun /= np.linalg.norm(sun)
    lamp = np.array([rng.uniform(0.3, 0.7) * room.width, rng.uniform(0.3, 0.7) * room.depth, room.height - 0.1])
    to_lamp = lamp - points
    dist = np.linalg.norm(to_lamp, axis=1, keepdims=True)
    lam_sun = np.clip(normals @ sun, 0, None)
    lam_pt = np.clip((normals * to_lamp / np.maximum(dist, 1e-6)).sum(1), 0, None) / (1 + (dist[:, 0] / 3.0) ** 2)
    light = ambient + 0.3 * lam_sun + 0.55 * lam_pt
    return np.clip(albedo * light[:, None] * 255.0 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Scene mesh
# --------------------------------------------------------------------------------------

def _points_in_part(part: Part, q: np.ndarray, tol: float) -> np.ndarray:
    """(n,) bool: object-frame points ``q`` (n, 3) inside ``part`` grown by ``tol``."""
    d = q - np.asarray(part.center)
    half = np.asarray(part.size) / 2 + tol
    if part.kind == "box":
        return (np.abs(d) <= half).all(1)
    if part.kind == "ellipsoid":
        return ((d / half) ** 2).sum(1) <= 1.0
    perm = list(_CYCLIC[part.axis])       # built axes (radial a, radial b, height) in the part frame
    da, db, dh = d[:, perm[0]], d[:, perm[1]], d[:, perm[2]]
    size = np.asarray(part.size)
    ra, rb, h = size[perm[0]] / 2, size[perm[1]] / 2, size[perm[2]]
    k_bottom = 1.0 / max(1.0, part.taper)
    k = k_bottom * (1 + (part.taper - 1) * np.clip(dh / h + 0.5, 0, 1))
    return (np.abs(dh) <= h / 2 + tol) & ((da / (ra * k + tol)) ** 2 + (db / (rb * k + tol)) ** 2 <= 1.0)


def _structure(room: Room, spacing: float) -> list[tuple[str, _Piece, np.ndarray]]:
    """Floor and the four walls as (label, piece in world, albedo) with inward normals."""
    w, d, h = room.width, room.depth, room.height
    floor = _rect((w / 2, d / 2, 0.0), (1, 0, 0), (0, 1, 0), w, d, spacing)
    out = [("floor", floor, texture_albedo(floor.v, (w, d, 0.01), room.floor_color, room.floor_color2,
                                           room.floor_texture, room.floor_scale, room.seed))]
    for k in range(4):
        o, t, n, length = room.wall_frame(k)
        center = np.array([*(o + t * length / 2), h / 2])
        u = np.cross([0, 0, 1.0], [*n, 0.0])      # u x z = inward normal
        piece = _rect(center, u, [0, 0, 1.0], length, h, spacing)
        local = np.stack([(piece.v[:, :2] - o) @ t, piece.v[:, 2], np.zeros(len(piece.v))], 1)
        out.append(("wall", piece, texture_albedo(local, (length, h, 0.01), room.wall_color, room.wall_color,
                                                  "noise", 2.5, room.seed + 1 + k)))
    return out


def _mesh_layout(layout: Layout, obj_spacing: float, struct_spacing: float):
    """Raw world mesh arrays before hidden-vertex removal and shading.

    Returns:
        dict with v (N, 3), n (N, 3), f (F, 3), albedo (N, 3), inst (N,), part (N,) global part index
        (-1 for structure), labels {instance id: name}.
    """
    vs, ns, fs, albs, insts, parts = [], [], [], [], [], []
    labels: dict[int, str] = {}

    def add(v, n, f, alb, inst, part):
        fs.append(f + sum(len(x) for x in vs))
        vs.append(v)
        ns.append(n)
        albs.append(alb)
        insts.append(np.full(len(v), inst))
        parts.append(np.full(len(v), part))

    for inst, (name, piece, alb) in enumerate(_structure(layout.room, struct_spacing), start=1):
        labels[inst] = name
        add(piece.v, piece.n, piece.f, alb, inst, -1)
    first = len(labels) + 1
    gpart = 0
    for k, pl in enumerate(layout.objects):
        labels[first + k] = pl.category
        rot = pl.rotation()
        for part in pl.model.parts:
            piece = mesh_part(part, obj_spacing, on_ground=True)
            alb = texture_albedo(piece.v - part.lo, part.size, part.color, part.color2, part.texture,
                                 part.scale, part.seed)
            add(pl.to_world(piece.v), piece.n @ rot.T, piece.f, alb, first + k, gpart)
            gpart += 1
    return dict(v=np.concatenate(vs), n=np.concatenate(ns), f=np.concatenate(fs), albedo=np.concatenate(albs),
                inst=np.concatenate(insts).astype(np.int64), part=np.concatenate(parts).astype(np.int64),
                labels=labels)


def _covered(v: np.ndarray, part_of: np.ndarray, layout: Layout, tol: float) -> np.ndarray:
    """(N,) bool: vertices inside (within ``tol``) a part other than their own, i.e. hidden surface."""
    covered = np.zeros(len(v), dtype=bool)
    by_x = np.argsort(v[:, 0], kind="stable")        # x-sorted order: each object's x slab is one slice
    xs = v[by_x, 0]
    gpart = 0
    for pl in layout.objects:
        lo, hi = pl.model.lo - tol, pl.model.hi + tol
        corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T
        wc = pl.to_world(corners)
        w0, w1 = wc.min(0), wc.max(0)
        slab = by_x[np.searchsorted(xs, w0[0], "left"):np.searchsorted(xs, w1[0], "right")]
        vy = v[slab, 1:]
        cand = np.sort(slab[(vy >= w0[1:]).all(1) & (vy <= w1[1:]).all(1)])   # ascending, as a full scan gives
        q = pl.to_local(v[cand])
        for part in pl.model.parts:
            inside = _points_in_part(part, q, tol) & (part_of[cand] != gpart)
            covered[cand[inside]] = True
            gpart += 1
    return covered


def _segments(v: np.ndarray, inst: np.ndarray, part: np.ndarray) -> np.ndarray:
    """(N,) int64 over-segmentation: (instance, part, cell of SEGMENT_CELL) for objects, cells of
    STRUCTURE_CELL for floor and walls; never straddles two instances."""
    cell = np.where(part[:, None] >= 0, np.floor(v / SEGMENT_CELL), np.floor(v / STRUCTURE_CELL)).astype(np.int64)
    keys = np.concatenate([inst[:, None], part[:, None], cell], axis=1)
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    lo = keys.min(0)
    span = keys.max(0) - lo + 1
    if np.prod(span.astype(np.float64)) < 2.0**62:
        # row-major packing keeps the lexicographic row order: the same ids as unique(keys, axis=0), much faster
        packed = np.ravel_multi_index(tuple((keys - lo).T), tuple(span))
        return np.unique(packed, return_inverse=True)[1].reshape(-1).astype(np.int64)
    return np.unique(keys, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def build_scene_mesh(layout: Layout, scene_id: str, rng: np.random.Generator, spacing: float = OBJECT_SPACING,
                     structure_spacing: float = STRUCTURE_SPACING, max_vertices: int = MAX_VERTICES) -> SceneMesh:
    """Mesh a layout into a ScanNet-like :class:`SceneMesh`.

    Instances: 1 = floor, 2-5 = walls 0-3, then ``layout.objects`` in order (instance ``6 + i``).
    When the mesh would exceed ``max_vertices``, both spacings grow by the needed factor.

    Args:
        layout: the room and its objects.
        scene_id: e.g. ``synth0003_00``.
        rng: light placement (shading) randomness.
        spacing, structure_spacing: target vertex spacing on objects / on floor and walls (m).
        max_vertices: upper bound on the vertex count.
    """
    if spacing <= 0 or structure_spacing <= 0:
        raise ValueError(f"spacings must be positive, got {spacing}, {structure_spacing}")
    for _ in range(4):
        raw = _mesh_layout(layout, spacing, structure_spacing)
        hidden = _covered(raw["v"], raw["part"], layout, COVER_TOL)
        keep_face = ~hidden[raw["f"]].all(1)
        faces = raw["f"][keep_face]
        used = np.zeros(len(raw["v"]), dtype=bool)
        used[faces.ravel()] = True
        if used.sum() <= max_vertices:
            break
        factor = np.sqrt(used.sum() / max_vertices) * 1.03
        spacing, structure_spacing = spacing * factor, structure_spacing * factor
    remap = np.cumsum(used) - 1
    v, nrm, alb = raw["v"][used], raw["n"][used], raw["albedo"][used]
    inst, part = raw["inst"][used], raw["part"][used]
    colors = shade(alb, nrm, v, layout.room, rng)
    names = raw["labels"]
    sem_of_inst = np.zeros(max(names) + 1, dtype=np.int64)
    for i, name in names.items():
        sem_of_inst[i] = label_id(name)
    return SceneMesh(scene_id=scene_id, vertices=v.astype(np.float32), colors=colors,
                     faces=remap[faces].astype(np.int64),
                     semantic_ids=sem_of_inst[inst], instance_ids=inst, segments=_segments(v, inst, part),
                     instance_labels=dict(names))


# --------------------------------------------------------------------------------------
# Camera walk
# --------------------------------------------------------------------------------------

def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(T, 4, 4) camera-to-world poses of OpenCV cameras at ``eye`` (T, 3) looking at ``target`` (T, 3), z up."""
    f = target - eye
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    down = np.cross(f, r)
    pose = np.tile(np.eye(4), (len(eye), 1, 1))
    pose[:, :3, 0], pose[:, :3, 1], pose[:, :3, 2], pose[:, :3, 3] = r, down, f, eye
    return pose


def _walk(layout: Layout, num_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One candidate closed walk: eye (T, 3) and look-at target (T, 3)."""
    room = layout.room
    c = np.array([room.width / 2, room.depth / 2])
    ax = max(0.3, room.width / 2 - 1.0) * rng.uniform(0.55, 0.9)
    ay = max(0.3, room.depth / 2 - 1.0) * rng.uniform(0.55, 0.9)
    t = np.arange(num_frames) / num_frames
    sense = 1.0 if rng.random() < 0.5 else -1.0
    ph = rng.uniform(0, 2 * np.pi, 4)
    theta = ph[0] + sense * 2 * np.pi * t
    wob = 1 + 0.12 * np.sin(2 * np.pi * 2 * t + ph[1])
    eye = np.stack([c[0] + ax * wob * np.cos(theta), c[1] + ay * wob * np.sin(theta),
                    np.clip(rng.uniform(1.3, 1.5) + 0.1 * np.sin(2 * np.pi * 3 * t + ph[2]), 1.2, 1.6)], 1)
    # look across the room (through the centre), sweeping +-35 deg, at a von Mises blend of object centres
    alpha = theta + np.pi + 0.6 * np.sin(2 * np.pi * 5 * t + ph[3])
    lo = np.stack([p.to_world(np.array([(p.model.lo + p.model.hi) / 2]))[0] for p in layout.objects])
    lo[:, 2] = np.clip(lo[:, 2], 0.3, 1.2)
    rel = lo[None, :, :2] - eye[:, None, :2]                           # (T, K, 2)
    dist = np.linalg.norm(rel, axis=2)
    ang = np.arctan2(rel[..., 1], rel[..., 0])
    w = np.exp(3.0 * np.cos(ang - alpha[:, None])) / (1 + np.exp(-(dist - 0.9) / 0.1))
    target = (w[..., None] * lo[None]).sum(1) / np.maximum(w.sum(1, keepdims=True), 1e-9)
    dh = target[:, :2] - eye[:, :2]
    ln = np.linalg.norm(dh, axis=1, keepdims=True)
    fallback = np.stack([np.cos(alpha), np.sin(alpha)], 1)
    unit = np.where(ln > 1e-6, dh / np.maximum(ln, 1e-6), fallback)
    ln = np.maximum(ln, 1.0)
    target[:, :2] = eye[:, :2] + unit * ln
    # keep the pitch within [-50, +5] degrees
    elev = np.clip(np.arctan2(target[:, 2] - eye[:, 2], ln[:, 0]), np.radians(-50), np.radians(5))
    target[:, 2] = eye[:, 2] + np.tan(elev) * ln[:, 0]
    return eye, target


def _clearance(eye: np.ndarray, layout: Layout) -> float:
    """Smallest distance (m) from the eye positions to any object's bounding box (negative inside)."""
    best = np.inf
    for p in layout.objects:
        q = p.to_local(eye)
        d_out = np.linalg.norm(np.maximum(np.maximum(p.model.lo - q, q - p.model.hi), 0), axis=1)
        d_in = np.minimum(q - p.model.lo, p.model.hi - q).min(1)
        best = min(best, float(np.where(d_out > 0, d_out, -d_in).min()))
    return best


def camera_path(layout: Layout, num_frames: int, rng: np.random.Generator, tries: int = 8) -> np.ndarray:
    """(T, 4, 4) camera-to-world poses (OpenCV) of a smooth closed walk at 1.2-1.6 m looking at objects.

    Up to ``tries`` candidate walks are drawn; the first keeping 0.25 m from every object's
    bounding box wins (else the one with the largest clearance).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    best, best_c = None, -np.inf
    for _ in range(tries):
        eye, target = _walk(layout, num_frames, rng)
        c = _clearance(eye, layout)
        if c > best_c:
            best, best_c = (eye, target), c
        if c >= 0.25:
            break
    return look_at(*best)


# --------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------

class Renderer:
    """Ray-casts a :class:`SceneMesh` with ``open3d.t.geometry.RaycastingScene`` (one cast per frame).

    Args:
        mesh: the scene (vertex colours and instance ids are rendered).
        intrinsics: (3, 3) pinhole matrix; pixel centres at integer coordinates.
        width, height: image size.
    """

    def __init__(self, mesh: SceneMesh, intrinsics: np.ndarray = INTRINSICS, width: int = WIDTH, height: int = HEIGHT):
        import open3d as o3d

        if mesh.faces.size == 0:
            raise ValueError(f"{mesh.scene_id}: cannot render a mesh without faces")
        self._o3d = o3d
        self.intrinsics = np.asarray(intrinsics, dtype=np.float64)
        self.width, self.height = int(width), int(height)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(mesh.vertices.astype(np.float32)),
                                 o3d.core.Tensor(mesh.faces.astype(np.uint32)))
        self.faces = mesh.faces
        self.face_colors = np.take(mesh.colors.astype(np.float32), mesh.faces, axis=0)   # (F, 3, 3)
        self.face_instance = mesh.instance_ids[mesh.faces[:, 0]].astype(np.int32)

    def cast(self, pose: np.ndarray, stride: int = 1) -> dict[str, np.ndarray]:
        """Cast the rays of every ``stride``-th pixel (rows and columns) of the camera at ``pose``.

        Returns t_hit (h, w) float32 (inf = miss; equals the depth since rays have unit z in the
        camera frame), prim (h, w) int64 hit triangle and uv (h, w, 2) barycentric coordinates
        (hit = (1 - u - v) p0 + u p1 + v p2).
        """
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (4, 4) or not np.isfinite(pose).all():
            raise ValueError(f"pose must be a finite (4, 4) matrix, got shape {pose.shape}")
        k = self.intrinsics / np.array([[stride], [stride], [1.0]])
        # open3d puts pixel (u, v)'s ray through (u + 0.5, v + 0.5); ScanNet/OpenCV pixel centres are integers
        k[0, 2] -= 0.5
        k[1, 2] -= 0.5
        w, h = -(-self.width // stride), -(-self.height // stride)
        o3c = self._o3d.core
        rays = self.scene.create_rays_pinhole(o3c.Tensor(k), o3c.Tensor(np.linalg.inv(pose)), w, h)
        ans = self.scene.cast_rays(rays)
        return {"t_hit": ans["t_hit"].numpy(), "prim": ans["primitive_ids"].numpy().astype(np.int64),
                "uv": ans["primitive_uvs"].numpy()}

    def render(self, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Colour (H, W, 3) uint8, depth (H, W) float32 metres (0 = no hit), instance (H, W) int32 (0 = none)."""
        r = self.cast(pose)
        miss = ~np.isfinite(r["t_hit"].reshape(-1))
        prim = r["prim"].reshape(-1)
        prim[miss] = 0
        uv = r["uv"].reshape(-1, 2)
        c = np.take(self.face_colors, prim, axis=0)                           # (P, 3 corners, 3)
        col = c[:, 0] + uv[:, :1] * (c[:, 1] - c[:, 0]) + uv[:, 1:] * (c[:, 2] - c[:, 0])
        col[miss] = 0
        color = (col + 0.5).astype(np.uint8).reshape(self.height, self.width, 3)   # convex mix: stays in 0..255
        depth = r["t_hit"].reshape(-1)
        depth[miss] = 0
        inst = np.take(self.face_instance, prim)
        inst[miss] = 0
        return color, depth.reshape(self.height, self.width), inst.reshape(self.height, self.width)

    def seen_vertices(self, pose: np.ndarray, stride: int = 4) -> np.ndarray:
        """(k,) indices (with repeats) of the vertices of the triangles hit by every ``stride``-th pixel's ray."""
        r = self.cast(pose, stride)
        prim = r["prim"][np.isfinite(r["t_hit"])]
        return np.take(self.faces, prim, axis=0).ravel()


class RenderedWalk(Sequence):
    """The frames of a walk through a scene, rendered lazily (a re-iterable ``Sequence[Frame]``).

    Args:
        mesh: the scene.
        poses: (T, 4, 4) camera-to-world.
        intrinsics, width, height: the camera.
        fps: frame ``i`` gets stamp ``i / fps``.
        layout: the layout (or multi-room :class:`~training.data.synth_apartment.Apartment`) the mesh
            was built from (kept for metadata and tests), optional.
    """

    def __init__(self, mesh: SceneMesh, poses: np.ndarray, intrinsics: np.ndarray = INTRINSICS,
                 width: int = WIDTH, height: int = HEIGHT, fps: float = FPS, layout: Layout | Apartment | None = None):
        poses = np.asarray(poses, dtype=np.float64)
        if poses.ndim != 3 or poses.shape[1:] != (4, 4):
            raise ValueError(f"poses must be (T, 4, 4), got {poses.shape}")
        self.mesh, self.poses, self.fps, self.layout = mesh, poses, float(fps), layout
        self.intrinsics, self.width, self.height = np.asarray(intrinsics, np.float64), int(width), int(height)
        self._renderer: Renderer | None = None
        self.render_seconds = 0.0   # accumulated ray-casting + shading time (for per-stage timings)

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            self._renderer = Renderer(self.mesh, self.intrinsics, self.width, self.height)
        return self._renderer

    def __len__(self) -> int:
        return len(self.poses)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} frames")
        i = i % len(self)
        t0 = time.perf_counter()
        color, depth, inst = self.renderer.render(self.poses[i])
        self.render_seconds += time.perf_counter() - t0
        return Frame(index=i, color=color, depth=depth, intrinsics=self.intrinsics.copy(), pose=self.poses[i].copy(),
                     stamp=i / self.fps, instance=inst)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self[i]


def fused_clouds(walk: RenderedWalk, every: int = 50, stride: int = 4,
                 progress: bool = False) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """The map a mapping node would publish along the walk: the mesh vertices observed so far.

    A vertex counts as observed once a triangle holding it was hit by a ray of some frame
    (rays of every ``stride``-th pixel, to keep this pass cheap). A cloud is emitted after every
    ``every`` frames and after the last one, stamped with that frame's stamp. Each cloud holds
    the previous one's points (in mesh vertex order) plus the newly observed ones.

    Returns:
        [(stamp seconds, xyz (k, 3) float32, rgb (k, 3) uint8)], stamps increasing.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    seen = np.zeros(walk.mesh.num_vertices, dtype=bool)
    out = []
    n = len(walk)
    for i in tqdm(range(n), desc="fused clouds", unit="frame", disable=not progress):
        seen[walk.renderer.seen_vertices(walk.poses[i], stride)] = True
        if (i + 1) % every == 0 or i == n - 1:
            out.append((i / walk.fps, walk.mesh.vertices[seen].copy(), walk.mesh.colors[seen].copy()))
    return out
