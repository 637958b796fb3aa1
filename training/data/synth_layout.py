"""Room layouts of the synthetic ScanNet-style world: a rectangular room and 8-30 placed objects.

World frame: metres, z up, the room spans ``[0, width] x [0, depth] x [0, height]``.
Walls are numbered 0..3: y = 0 (inward normal +y), x = width (-x), y = depth (-y), x = 0 (+x).

Placement (:func:`sample_layout`) follows a room theme (:data:`THEMES`, data): anchors first
(a bedroom gets a bed), then wall-mounted objects (a door, windows, pictures...), floor
furniture against walls or free-standing with any yaw, chairs around tables
(:data:`COMPANIONS`), and small objects on the surfaces of furniture (cups on tables, books on
shelves, pillows on beds) so that objects occlude each other. Every candidate is tested
against the objects already placed (oriented footprints, rotation about z, plus the height
interval) and resampled on collision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.synth_objects import ObjectModel, Surface, make_object, spec

Vec3 = tuple[float, float, float]

MIN_OBJECTS, MAX_OBJECTS = 8, 30
WALL_GAP = 0.02        # m between a wall and furniture standing against it
# m between a wall and a wall-mounted object: no coplanar faces, yet the wall behind the object
# lies within synth_render.COVER_TOL of it and is dropped as hidden surface
MOUNT_GAP = 0.001
_EPS = 1e-6

# theme -> room side range (m), anchors (always tried first), furniture / wall-mounted / small-object
# weights (category, weight); wall-mounted entries also carry a maximum count.
THEMES: dict[str, dict] = {
    "bedroom": dict(
        room=(3.5, 5.5), anchors=("bed",),
        furniture=(("nightstand", 3), ("dresser", 2), ("cabinet", 1), ("bookshelf", 1), ("desk", 1),
                   ("armchair", 1), ("plant", 1), ("trash can", 1), ("backpack", 1), ("box", 1), ("shelf", 1)),
        wall=(("window", 2), ("picture", 3), ("radiator", 1), ("clock", 1)),
        small=(("pillow", 4), ("lamp", 2), ("book", 3), ("cup", 1), ("bottle", 1), ("potted plant", 1),
               ("laptop", 1))),
    "office": dict(
        room=(3.5, 7.0), anchors=("desk",),
        furniture=(("desk", 3), ("bookshelf", 2), ("cabinet", 2), ("shelf", 1), ("table", 1),
                   ("trash can", 2), ("box", 2), ("plant", 1), ("backpack", 1)),
        wall=(("window", 2), ("picture", 2), ("whiteboard", 1), ("clock", 1), ("radiator", 1)),
        small=(("monitor", 3), ("keyboard", 2), ("laptop", 2), ("book", 3), ("cup", 2), ("bottle", 2),
               ("lamp", 1), ("potted plant", 1))),
    "living room": dict(
        room=(4.0, 7.0), anchors=("couch",),
        furniture=(("armchair", 2), ("coffee table", 2), ("bookshelf", 1), ("shelf", 2), ("cabinet", 1),
                   ("plant", 2), ("table", 1), ("stool", 1), ("box", 1)),
        wall=(("window", 2), ("picture", 3), ("clock", 1), ("radiator", 1)),
        small=(("pillow", 3), ("tv", 1), ("book", 2), ("bowl", 2), ("cup", 2), ("potted plant", 2),
               ("lamp", 2), ("bottle", 1))),
    "kitchen": dict(
        room=(3.5, 6.0), anchors=("kitchen counter", "refrigerator"),
        furniture=(("dining table", 2), ("table", 1), ("cabinet", 2), ("trash can", 2), ("stool", 1),
                   ("shelf", 1), ("box", 1)),
        wall=(("window", 2), ("picture", 1), ("clock", 1), ("radiator", 1)),
        small=(("microwave", 2), ("bowl", 3), ("cup", 3), ("bottle", 3), ("potted plant", 1), ("book", 1))),
    "bathroom": dict(
        room=(3.5, 4.5), anchors=("toilet", "sink"),
        furniture=(("cabinet", 1), ("shelf", 1), ("trash can", 2), ("box", 1), ("plant", 1)),
        wall=(("window", 1), ("picture", 1), ("radiator", 1), ("clock", 1)),
        small=(("bottle", 3), ("cup", 1), ("bowl", 1), ("potted plant", 1), ("book", 1))),
}

# table-like category -> (chair categories, min count, max count, sides in the table frame).
COMPANIONS: dict[str, tuple[tuple[str, ...], int, int, tuple[str, ...]]] = {
    "table": (("chair",), 1, 4, ("+y", "-y", "+x", "-x")),
    "dining table": (("chair",), 2, 4, ("+y", "-y", "+x", "-x")),
    "desk": (("office chair", "chair"), 1, 1, ("+y",)),
}

# furniture category -> small objects tried on its first surface, each with a probability (a desk gets a
# monitor and a keyboard, a bed its pillows) before the random filling of all surfaces.
DRESSING: dict[str, tuple[tuple[str, float], ...]] = {
    "desk": (("monitor", 0.8), ("keyboard", 0.7), ("lamp", 0.3), ("laptop", 0.3)),
    "bed": (("pillow", 0.95), ("pillow", 0.7)),
    "couch": (("pillow", 0.7), ("pillow", 0.4)),
    "armchair": (("pillow", 0.4),),
    "nightstand": (("lamp", 0.6),),
    "kitchen counter": (("microwave", 0.5),),
    "coffee table": (("bowl", 0.4), ("book", 0.3)),
    "dresser": (("tv", 0.3), ("lamp", 0.3)),
}

# extra collision depth in front of wall-mounted objects (a door needs room to open).
MOUNT_CLEARANCE = {"door": 0.9, "radiator": 0.15}
DEFAULT_MOUNT_CLEARANCE = 0.1


@dataclass(frozen=True)
class Room:
    """The room box and its appearance.

    Attributes:
        width, depth, height: extents along x, y, z (m).
        wall_color, floor_color, floor_color2: (3,) albedo in [0, 1].
        floor_texture: texture name of the floor ('grain', 'checker', 'noise').
        floor_scale: floor texture period (m).
        seed: texture phase seed.
    """

    width: float
    depth: float
    height: float
    wall_color: Vec3 = (0.9, 0.9, 0.88)
    floor_color: Vec3 = (0.55, 0.4, 0.3)
    floor_color2: Vec3 = (0.45, 0.32, 0.24)
    floor_texture: str = "grain"
    floor_scale: float = 0.2
    seed: int = 0

    def wall_frame(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Wall k as (origin (2,), tangent (2,), inward normal (2,), length); tangent = normal rotated -90°."""
        w, d = self.width, self.depth
        frames = {0: ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), w),
                  1: ((w, 0.0), (0.0, 1.0), (-1.0, 0.0), d),
                  2: ((w, d), (-1.0, 0.0), (0.0, -1.0), w),
                  3: ((0.0, d), (0.0, -1.0), (1.0, 0.0), d)}
        if k not in frames:
            raise ValueError(f"wall index must be 0..3, got {k}")
        o, t, n, length = frames[k]
        return np.array(o), np.array(t), np.array(n), float(length)


@dataclass(frozen=True)
class Placement:
    """An object model put into the world.

    Attributes:
        model: the object in its local frame.
        position: (3,) world position of the model origin.
        yaw: rotation about z (rad); local +y maps to ``(-sin yaw, cos yaw)``.
        parent: index of the supporting placement (-1 = floor or wall).
        wall: wall index of wall-mounted objects (-1 otherwise).
        clearance: extra collision depth toward local +y (wall-mounted objects), m.
    """

    model: ObjectModel
    position: Vec3
    yaw: float
    parent: int = -1
    wall: int = -1
    clearance: float = 0.0

    @property
    def category(self) -> str:
        return self.model.category

    def rotation(self) -> np.ndarray:
        """(3, 3) rotation about z by ``yaw``."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    def transform(self) -> np.ndarray:
        """(4, 4) object-to-world matrix."""
        t = np.eye(4)
        t[:3, :3] = self.rotation()
        t[:3, 3] = self.position
        return t

    def to_world(self, pts: np.ndarray) -> np.ndarray:
        """(n, 3) local points -> (n, 3) world points."""
        return np.asarray(pts) @ self.rotation().T + np.asarray(self.position)

    def to_local(self, pts: np.ndarray) -> np.ndarray:
        """(n, 3) world points -> (n, 3) local points."""
        return (np.asarray(pts) - np.asarray(self.position)) @ self.rotation()

    def footprint(self, with_clearance: bool = False) -> np.ndarray:
        """(4, 2) world xy corners (counter-clockwise) of the model's local xy bounding box."""
        lo, hi = self.model.lo.copy(), self.model.hi.copy()
        if with_clearance:
            hi[1] += self.clearance
        corners = np.array([[lo[0], lo[1], 0], [hi[0], lo[1], 0], [hi[0], hi[1], 0], [lo[0], hi[1], 0]])
        return self.to_world(corners)[:, :2]

    def z_range(self) -> tuple[float, float]:
        """(bottom, top) world heights."""
        return float(self.position[2] + self.model.lo[2]), float(self.position[2] + self.model.hi[2])


@dataclass(frozen=True)
class Layout:
    """A room with its objects; ``objects[i].parent`` indexes this tuple."""

    room: Room
    objects: tuple[Placement, ...]
    theme: str


def footprints_overlap(a: np.ndarray, b: np.ndarray, eps: float = _EPS) -> np.ndarray:
    """Separating-axis test of one convex quadrilateral against many.

    Args:
        a: (4, 2) corners in order around the quad.
        b: (K, 4, 2) corners of K quads.
        eps: touching within eps does not count as overlap.

    Returns:
        (K,) bool, True where the interiors overlap.
    """
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4, 2)
    a = np.asarray(a, dtype=np.float64)
    if a.shape != (4, 2):
        raise ValueError(f"a must be (4, 2) corners, got {a.shape}")
    if len(b) == 0:
        return np.zeros(0, dtype=bool)
    ea = np.stack([a[1] - a[0], a[2] - a[1]])                       # (2, 2)
    eb = np.stack([b[:, 1] - b[:, 0], b[:, 2] - b[:, 1]], axis=1)    # (K, 2, 2)
    axes = np.concatenate([np.broadcast_to(ea, eb.shape), eb], axis=1)   # (K, 4, 2)
    axes = axes / np.maximum(np.linalg.norm(axes, axis=-1, keepdims=True), 1e-12)
    pa = np.einsum("kan,cn->kac", axes, a)                           # (K, 4 axes, 4 corners)
    pb = np.einsum("kan,kcn->kac", axes, b)
    separated = (pa.max(-1) <= pb.min(-1) + eps) | (pb.max(-1) <= pa.min(-1) + eps)
    return ~separated.any(-1)


def _collides(cand: Placement, placed: list[Placement], skip: set[int] = frozenset()) -> bool:
    """True when ``cand`` overlaps a placed object (footprints with clearance AND height intervals)."""
    others = [i for i in range(len(placed)) if i not in skip]
    if not others:
        return False
    z0, z1 = cand.z_range()
    zr = np.array([placed[i].z_range() for i in others])
    zhit = (zr[:, 0] < z1 - _EPS) & (z0 < zr[:, 1] - _EPS)
    if not zhit.any():
        return False
    fps = np.stack([placed[i].footprint(True) for i in np.asarray(others)[zhit]])
    return bool(footprints_overlap(cand.footprint(True), fps).any())


def _inside_room(p: Placement, room: Room, margin: float = 0.001) -> bool:
    fp = p.footprint(False)
    z0, z1 = p.z_range()
    return bool((fp[:, 0] >= margin - _EPS).all() and (fp[:, 0] <= room.width - margin + _EPS).all()
                and (fp[:, 1] >= margin - _EPS).all() and (fp[:, 1] <= room.depth - margin + _EPS).all()
                and z0 >= -_EPS and z1 <= room.height - 0.05)


def _yaw_facing(normal: np.ndarray) -> float:
    """Yaw that maps local +y onto the 2D direction ``normal``."""
    return float(np.arctan2(-normal[0], normal[1]))


def _against_wall(model: ObjectModel, room: Room, k: int, u: float, z: float, gap: float) -> tuple[Vec3, float]:
    """Position and yaw putting the model's back (local lo y) ``gap`` from wall k at ``u`` along it."""
    o, t, n, _ = room.wall_frame(k)
    xy = o + t * u + n * (gap - model.lo[1])
    return (float(xy[0]), float(xy[1]), float(z)), _yaw_facing(n)


def _pick(items: tuple[tuple[str, float], ...], rng: np.random.Generator) -> str:
    names = [c for c, _ in items]
    w = np.array([float(x) for _, x in items])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _try_place(make, placed: list[Placement], room: Room, tries: int, skip_parent: bool = False) -> Placement | None:
    """Call ``make()`` until it returns a candidate that fits the room and collides with nothing."""
    for _ in range(tries):
        cand = make()
        if cand is None:
            continue
        skip = {cand.parent} if skip_parent and cand.parent >= 0 else set()
        if _inside_room(cand, room) and not _collides(cand, placed, skip):
            return cand
    return None


def _wall_mounted(name: str, room: Room, rng: np.random.Generator) -> Placement:
    s = spec(name)
    model = make_object(name, rng)
    k = int(rng.integers(4))
    length = room.wall_frame(k)[3]
    half = max(-model.lo[0], model.hi[0])
    u = float(rng.uniform(half + 0.1, max(half + 0.1, length - half - 0.1)))
    z = float(rng.uniform(*s.mount_z))
    pos, yaw = _against_wall(model, room, k, u, z, MOUNT_GAP)
    return Placement(model, pos, yaw, wall=k, clearance=MOUNT_CLEARANCE.get(name, DEFAULT_MOUNT_CLEARANCE))


def _floor_object(name: str, room: Room, rng: np.random.Generator) -> Placement:
    s = spec(name)
    model = make_object(name, rng)
    if s.placement == "wall":
        k = int(rng.integers(4))
        length = room.wall_frame(k)[3]
        half = max(-model.lo[0], model.hi[0])
        u = float(rng.uniform(half + WALL_GAP, max(half + WALL_GAP, length - half - WALL_GAP)))
        pos, yaw = _against_wall(model, room, k, u, 0.0, WALL_GAP)
        return Placement(model, pos, yaw)
    r = float(np.linalg.norm(np.maximum(-model.lo[:2], model.hi[:2])))
    x = rng.uniform(min(r, room.width / 2), max(room.width - r, room.width / 2))
    y = rng.uniform(min(r, room.depth / 2), max(room.depth - r, room.depth / 2))
    yaw = rng.uniform(0, 2 * np.pi) if rng.random() < 0.6 else rng.integers(4) * np.pi / 2 + rng.normal(0, 0.05)
    return Placement(model, (float(x), float(y), 0.0), float(yaw))


def _companions(table_idx: int, placed: list[Placement], room: Room, rng: np.random.Generator) -> list[Placement]:
    """Chairs around a table/desk, facing it (:data:`COMPANIONS`)."""
    table = placed[table_idx]
    chairs, lo_n, hi_n, sides = COMPANIONS[table.category]
    n = int(rng.integers(lo_n, hi_n + 1))
    order = rng.permutation(len(sides))[:n]
    lo, hi = table.model.lo, table.model.hi
    out: list[Placement] = []
    for j in order:
        side = sides[j]
        axis, sign = (0 if side[1] == "x" else 1), (1.0 if side[0] == "+" else -1.0)
        normal = np.zeros(2)
        normal[axis] = sign
        for _ in range(6):
            model = make_object(chairs[int(rng.integers(len(chairs)))], rng)
            along = rng.uniform(-0.15, 0.15) * (hi[1 - axis] - lo[1 - axis])
            edge = hi[axis] if sign > 0 else -lo[axis]
            dist = edge + rng.uniform(0.03, 0.2) + model.hi[1]   # chair front (+y) faces the table
            local = np.zeros(3)
            local[axis] = sign * dist
            local[1 - axis] = along
            world = table.to_world(local[None])[0]
            world_n = table.rotation()[:2, :2] @ (-normal)
            yaw = _yaw_facing(world_n) + rng.normal(0, 0.1)
            cand = Placement(model, (float(world[0]), float(world[1]), 0.0), float(yaw))
            if _inside_room(cand, room) and not _collides(cand, placed + out):
                out.append(cand)
                break
    return out


def _surface_world_ok(surf: Surface, model: ObjectModel, x: float, y: float, yaw: float) -> bool:
    """The rotated footprint of ``model`` at (x, y, yaw) in surface coordinates lies inside the surface."""
    lo, hi = model.lo, model.hi
    c, s = np.cos(yaw), np.sin(yaw)
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]]) @ np.array([[c, s], [-s, c]])
    cx, cy = surf.center[0], surf.center[1]
    hx, hy = surf.size[0] / 2, surf.size[1] / 2
    return bool((np.abs(corners[:, 0] + x - cx) <= hx).all() and (np.abs(corners[:, 1] + y - cy) <= hy).all())


def _on_surface(name: str, parent_idx: int, surf: Surface, placed: list[Placement],
                rng: np.random.Generator) -> Placement | None:
    """A small object standing on ``surf`` of ``placed[parent_idx]`` (None if it does not fit)."""
    parent = placed[parent_idx]
    model = make_object(name, rng)
    if model.height > surf.clearance:
        return None
    yaw = rng.normal(0, 0.08) if surf.kind in ("shelf", "bed", "seat") else rng.uniform(0, 2 * np.pi)
    x = surf.center[0] + rng.uniform(-surf.size[0] / 2, surf.size[0] / 2)
    y = surf.center[1] + rng.uniform(-surf.size[1] / 2, surf.size[1] / 2)
    if not _surface_world_ok(surf, model, x, y, yaw):
        return None
    world = parent.to_world(np.array([[x, y, surf.center[2]]]))[0]
    return Placement(model, tuple(float(v) for v in world), float(parent.yaw + yaw), parent=parent_idx)


def _sample_room(theme: str, rng: np.random.Generator) -> Room:
    lo, hi = THEMES[theme]["room"]
    walls = ((0.92, 0.92, 0.9), (0.93, 0.9, 0.82), (0.85, 0.88, 0.9), (0.8, 0.85, 0.78), (0.95, 0.93, 0.9))
    floors = (((0.55, 0.4, 0.28), (0.45, 0.32, 0.22), "grain", 0.18),
              ((0.8, 0.8, 0.78), (0.65, 0.65, 0.64), "checker", 0.3),
              ((0.45, 0.45, 0.5), (0.4, 0.4, 0.45), "noise", 0.3),
              ((0.7, 0.55, 0.4), (0.6, 0.46, 0.33), "grain", 0.15))
    wc = np.clip(np.asarray(walls[int(rng.integers(len(walls)))]) + rng.normal(0, 0.02, 3), 0, 1)
    f1, f2, ftex, fscale = floors[int(rng.integers(len(floors)))]
    return Room(float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), float(rng.uniform(2.5, 3.0)),
                tuple(float(v) for v in wc), f1, f2, ftex, fscale, int(rng.integers(2**31 - 1)))


def sample_layout(rng: np.random.Generator, theme: str | None = None) -> Layout:
    """Sample a room and 8-30 non-interpenetrating objects.

    Args:
        rng: the only source of randomness (same state -> same layout).
        theme: a key of :data:`THEMES`; random when None.

    Returns:
        The :class:`Layout`; supported objects come after their parents.

    Raises:
        ValueError: unknown theme. RuntimeError: fewer than 8 objects fit after many tries.
    """
    if theme is None:
        theme = sorted(THEMES)[int(rng.integers(len(THEMES)))]
    if theme not in THEMES:
        raise ValueError(f"unknown theme {theme!r}; known: {sorted(THEMES)}")
    th = THEMES[theme]
    for _attempt in range(20):
        room = _sample_room(theme, rng)
        target = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
        placed: list[Placement] = []

        def add(p: Placement | None) -> bool:
            if p is not None and len(placed) < target:
                placed.append(p)
                return True
            return False

        add(_try_place(lambda: _wall_mounted("door", room, rng), placed, room, 30))
        for name in th["anchors"]:
            add(_try_place(lambda: _floor_object(name, room, rng), placed, room, 40))
        for _ in range(int(rng.integers(1, 5))):
            add(_try_place(lambda: _wall_mounted(_pick(th["wall"], rng), room, rng), placed, room, 10))
        area = room.width * room.depth
        n_furn = int(np.clip(round(area / 3.0 * rng.uniform(0.6, 1.2)), 2, 9))
        for _ in range(n_furn):
            name = _pick(th["furniture"], rng)
            add(_try_place(lambda: _floor_object(name, room, rng), placed, room, 15))
        for i in range(len(placed)):
            if placed[i].category in COMPANIONS:
                for c in _companions(i, placed, room, rng):
                    add(c)
        _dress(placed, target, rng)
        _fill_surfaces(placed, room, th, target, rng)
        if len(placed) >= MIN_OBJECTS:
            return Layout(room, tuple(placed), theme)
    raise RuntimeError(f"could not place {MIN_OBJECTS} objects in a {theme} after 20 rooms")


def _dress(placed: list[Placement], target: int, rng: np.random.Generator) -> None:
    """Typical small objects on the first surface of furniture (:data:`DRESSING`)."""
    for i in range(len(placed)):
        p = placed[i]
        if p.parent >= 0 or not p.model.surfaces:
            continue
        for name, prob in DRESSING.get(p.category, ()):
            if len(placed) >= target or rng.random() >= prob:
                continue
            surf = p.model.surfaces[0]
            cand = None
            for _ in range(6):
                c = _on_surface(name, i, surf, placed, rng)
                if c is not None and not _collides(c, placed, {i}):
                    cand = c
                    break
            if cand is not None:
                placed.append(cand)


def _fill_surfaces(placed: list[Placement], room: Room, theme: dict, target: int, rng: np.random.Generator) -> None:
    """Put the theme's small objects on furniture surfaces (now and then one of its small floor
    objects: box, trash can...) until ``target`` objects exist."""
    small = theme["small"]
    floor_small = tuple(c for c, _ in theme["furniture"] if spec(c).placement == "floor") or ("box",)
    for _ in range(12 * MAX_OBJECTS):
        if len(placed) >= target:
            return
        surfaces = [(i, s) for i, p in enumerate(placed) if p.parent < 0 for s in p.model.surfaces]
        if not surfaces or rng.random() < 0.08:
            name = floor_small[int(rng.integers(len(floor_small)))]
            cand = _try_place(lambda: _floor_object(name, room, rng), placed, room, 5)
        else:
            area = np.array([s.size[0] * s.size[1] for _, s in surfaces])
            i, surf = surfaces[int(rng.choice(len(surfaces), p=area / area.sum()))]
            fitting = tuple((c, w) for c, w in small if surf.kind in spec(c).supports)
            if not fitting:
                continue
            name = _pick(fitting, rng)
            cand = _try_place(lambda: _on_surface(name, i, surf, placed, rng), placed, room, 4, skip_parent=True)
        if cand is not None:
            placed.append(cand)
