"""Category catalogue of the synthetic ScanNet-style world: parametric objects made of primitives.

An object is a composite of primitives (:class:`Part`) in its own local frame: metres, z up,
origin at the centre of its footprint on the surface it stands on (or, for wall-mounted
objects, at the bottom centre of the face that touches the wall), "front" toward +y (a
chair's seat opens toward +y, a bookshelf's shelves open toward +y, a picture looks toward +y).

The catalogue is data: one :class:`CategorySpec` per ScanNet200 category (size ranges,
colour palettes, texture, where it goes) in :data:`CATALOGUE`. A handful of template
builders (``_table``, ``_cabinet``, ``_shelf``, ...) turn a spec and a random generator into
an :class:`ObjectModel`; several categories share a template with different size ranges.
Surfaces on which small objects may stand (:class:`Surface`) come with the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from training.data.scannet200 import label_id

RGB = tuple[int, int, int]
Vec3 = tuple[float, float, float]

PART_KINDS = ("box", "cylinder", "ellipsoid")
TEXTURES = ("plain", "grain", "noise", "stripes", "checker")
PLACEMENTS = ("wall", "free", "floor", "wall_mounted", "support")
SURFACE_KINDS = ("top", "shelf", "bed", "seat")


@dataclass(frozen=True)
class Part:
    """One primitive of an object, axis-aligned in the object's local frame.

    Attributes:
        kind: 'box', 'cylinder' (a frustum when ``taper != 1``; axis along ``axis``) or 'ellipsoid'.
        center: (3,) centre of the part's bounding box, metres.
        size: (3,) full extents of the part's bounding box along x, y, z, metres (> 0).
        color: (3,) albedo in [0, 1].
        texture: one of :data:`TEXTURES`, evaluated on the part's local coordinates.
        color2: (3,) second albedo of 'stripes' / 'checker'.
        scale: texture period in metres.
        taper: cylinder only: top radius / bottom radius (0 = cone, > 1 widens upward).
        axis: cylinder only: 'x', 'y' or 'z'.
        seed: texture phase seed (deterministic textures).
    """

    kind: str
    center: Vec3
    size: Vec3
    color: Vec3
    texture: str = "plain"
    color2: Vec3 = (0.0, 0.0, 0.0)
    scale: float = 0.1
    taper: float = 1.0
    axis: str = "z"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("center", "size", "color", "color2"):   # arrays in, hashable float tuples stored
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        if self.kind not in PART_KINDS:
            raise ValueError(f"Part.kind must be one of {PART_KINDS}, got {self.kind!r}")
        if self.texture not in TEXTURES:
            raise ValueError(f"Part.texture must be one of {TEXTURES}, got {self.texture!r}")
        if len(self.size) != 3 or min(self.size) <= 0:
            raise ValueError(f"Part.size must be 3 positive extents, got {self.size}")
        if self.axis not in ("x", "y", "z"):
            raise ValueError(f"Part.axis must be 'x', 'y' or 'z', got {self.axis!r}")

    @property
    def lo(self) -> np.ndarray:
        """(3,) lower corner of the bounding box."""
        return np.asarray(self.center) - 0.5 * np.asarray(self.size)

    @property
    def hi(self) -> np.ndarray:
        """(3,) upper corner of the bounding box."""
        return np.asarray(self.center) + 0.5 * np.asarray(self.size)


@dataclass(frozen=True)
class Surface:
    """A horizontal rectangle of an object on which small objects may stand (object frame).

    Attributes:
        kind: one of :data:`SURFACE_KINDS`.
        center: (3,) centre of the rectangle; z is the surface height.
        size: (2,) extents along x and y.
        clearance: free height above the surface (inf when open).
    """

    kind: str
    center: Vec3
    size: tuple[float, float]
    clearance: float = float("inf")


@dataclass(frozen=True)
class ObjectModel:
    """One object instance's geometry in its local frame.

    Attributes:
        category: ScanNet200 label name.
        parts: the primitives.
        surfaces: where small objects may be put.
    """

    category: str
    parts: tuple[Part, ...]
    surfaces: tuple[Surface, ...] = ()

    @property
    def lo(self) -> np.ndarray:
        """(3,) lower corner of the bounding box of all parts."""
        return np.min([p.lo for p in self.parts], axis=0)

    @property
    def hi(self) -> np.ndarray:
        """(3,) upper corner of the bounding box of all parts."""
        return np.max([p.hi for p in self.parts], axis=0)

    @property
    def height(self) -> float:
        return float(self.hi[2])


@dataclass(frozen=True)
class CategorySpec:
    """One row of the catalogue.

    Attributes:
        name: ScanNet200 label name (checked against ``scannet200.json``).
        template: key of :data:`TEMPLATES` building the parts.
        size_min, size_max: (3,) ranges of the overall extents (width x, depth y, height z), metres.
        palette: main colours (RGB 0..255); one is picked and jittered per instance.
        accent: colours of secondary parts (legs, handles, frames).
        texture: texture of the main parts.
        placement: 'wall' (back against a wall), 'free' (anywhere, any yaw), 'floor'
            (small thing on the floor), 'wall_mounted' (hangs on / sits in a wall) or
            'support' (stands on a :class:`Surface` of another object).
        supports: for 'support' placement: the surface kinds it may stand on.
        mount_z: for 'wall_mounted': range of the bottom height above the floor, metres.
        round: footprint is a circle (depth := width).
        params: template-specific ranges, e.g. ``{"rows": (1, 3)}``.
    """

    name: str
    template: str
    size_min: Vec3
    size_max: Vec3
    palette: tuple[RGB, ...]
    accent: tuple[RGB, ...] = ((45, 45, 48),)
    texture: str = "plain"
    placement: str = "wall"
    supports: tuple[str, ...] = ()
    mount_z: tuple[float, float] = (0.0, 0.0)
    round: bool = False
    params: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"{self.name}: placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if any(k not in SURFACE_KINDS for k in self.supports):
            raise ValueError(f"{self.name}: supports must be among {SURFACE_KINDS}, got {self.supports}")
        if self.placement == "support" and not self.supports:
            raise ValueError(f"{self.name}: a 'support' category needs at least one surface kind")
        if any(lo > hi for lo, hi in zip(self.size_min, self.size_max)):
            raise ValueError(f"{self.name}: size_min {self.size_min} exceeds size_max {self.size_max}")


# --------------------------------------------------------------------------------------
# Template builders: (dims (3,), main (3,), accent (3,), texture, rng, params) -> (parts, surfaces)
# --------------------------------------------------------------------------------------

def _box(center, size, color, texture="plain", **kw) -> Part:
    return Part("box", center, size, color, texture, **kw)


def _cyl(center, size, color, texture="plain", **kw) -> Part:
    return Part("cylinder", center, size, color, texture, **kw)


def _ell(center, size, color, texture="plain", **kw) -> Part:
    return Part("ellipsoid", center, size, color, texture, **kw)


def _shade(c, f: float) -> np.ndarray:
    """A colour darkened (f < 1) or lightened (f > 1), clipped to [0, 1]."""
    return np.clip(np.asarray(c) * f, 0.0, 1.0)


def _block(d, main, acc, tex, rng, prm):
    """A plain box (cardboard box: with a tape strip on top)."""
    w, dp, h = d
    parts = [_box((0, 0, h / 2), (w, dp, h), main, tex, scale=0.08)]
    if prm.get("tape"):
        parts.append(_box((0, 0, h + 0.001), (w * 1.001, min(0.06, dp / 3), 0.002), acc))
    return parts, [Surface("top", (0, 0, h), (w, dp))]


def _cabinet(d, main, acc, tex, rng, prm):
    """A box body with a grid of door/drawer fronts and a handle on each; optional counter top."""
    w, dp, h = d
    top_t = 0.04 if prm.get("counter") else 0.0
    body_h = h - top_t
    parts = [_box((0, -0.005, body_h / 2), (w, dp - 0.01, body_h), main, tex, scale=0.1)]
    rows = int(rng.integers(prm.get("rows", (1, 1))[0], prm.get("rows", (1, 1))[1] + 1))
    cols = int(rng.integers(prm.get("cols", (1, 1))[0], prm.get("cols", (1, 1))[1] + 1))
    gap, z0 = 0.01, prm.get("plinth", 0.0)
    pw, ph = (w - gap * (cols + 1)) / cols, (body_h - z0 - gap * (rows + 1)) / rows
    front = _shade(main, 0.92)
    for r in range(rows):
        for c in range(cols):
            cx = -w / 2 + gap + pw / 2 + c * (pw + gap)
            cz = z0 + gap + ph / 2 + r * (ph + gap)
            parts.append(_box((cx, dp / 2 - 0.005, cz), (pw, 0.01, ph), front, tex, scale=0.1))
            if ph > pw:   # a door: vertical bar near the opening edge
                hx = cx + (pw / 2 - 0.05) * (1 if c % 2 == 0 else -1)
                parts.append(_box((hx, dp / 2 + 0.01, cz), (0.02, 0.02, min(0.3, ph * 0.4)), acc))
            else:         # a drawer: horizontal bar near the top
                parts.append(_box((cx, dp / 2 + 0.01, cz + ph * 0.25), (min(0.14, pw * 0.5), 0.02, 0.02), acc))
    if top_t:
        parts.append(_box((0, 0.01, h - top_t / 2), (w + 0.02, dp + 0.02, top_t), acc, "noise", scale=0.05))
    return parts, [Surface("top", (0, 0, h), (w - 0.04, dp - 0.04))]


def _table(d, main, acc, tex, rng, prm):
    """A top slab on four legs; a desk may replace two legs by a drawer pedestal."""
    w, dp, h = d
    t = float(rng.uniform(0.03, 0.05))
    leg = float(rng.uniform(0.04, 0.06))
    parts = [_box((0, 0, h - t / 2), (w, dp, t), main, tex, scale=0.12)]
    lx, ly = w / 2 - leg / 2 - 0.03, dp / 2 - leg / 2 - 0.03
    pedestal = prm.get("pedestal") and rng.random() < 0.7
    round_legs = rng.random() < 0.4
    for sx in (-1, 1):
        if pedestal and sx == 1:
            pw = min(0.42, w * 0.35)
            parts.append(_box((w / 2 - pw / 2 - 0.02, 0, (h - t) / 2), (pw, dp - 0.06, h - t), _shade(main, 0.9), tex))
            parts.append(_box((w / 2 - pw / 2 - 0.02, dp / 2 - 0.02, (h - t) * 0.8), (0.12, 0.02, 0.02), acc))
            continue
        for sy in (-1, 1):
            make = _cyl if round_legs else _box
            parts.append(make((sx * lx, sy * ly, (h - t) / 2), (leg, leg, h - t), acc))
    return parts, [Surface("top", (0, 0, h), (w - 0.04, dp - 0.04))]


def _chair(d, main, acc, tex, rng, prm):
    """Seat on four legs with a backrest at -y."""
    w, dp, h = d
    sh = float(np.clip(h * 0.5, 0.40, 0.48))
    st, leg = 0.05, 0.035
    parts = [_box((0, 0.02, sh - st / 2), (w, dp - 0.04, st), main, tex, scale=0.05)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box((sx * (w / 2 - leg), sy * (dp / 2 - leg - 0.02) + 0.02, (sh - st) / 2),
                              (leg, leg, sh - st), acc))
    parts.append(_box((0, -dp / 2 + 0.02, (sh + h) / 2), (w, 0.04, h - sh), main, tex, scale=0.05))
    return parts, []


def _office_chair(d, main, acc, tex, rng, prm):
    """Disc base, column, padded seat and a backrest at -y."""
    w, dp, h = d
    sh = float(np.clip(h * 0.47, 0.42, 0.52))
    r = min(w, dp)
    parts = [_cyl((0, 0, 0.03), (r * 0.95, r * 0.95, 0.06), acc),
             _cyl((0, 0, (sh - 0.08 + 0.06) / 2), (0.06, 0.06, sh - 0.14), acc),
             _box((0, 0.03, sh - 0.04), (w, dp - 0.06, 0.08), main, tex, scale=0.04),
             _box((0, -dp / 2 + 0.03, (sh + 0.1 + h) / 2), (w * 0.9, 0.06, h - sh - 0.1), main, tex, scale=0.04)]
    return parts, []


def _stool(d, main, acc, tex, rng, prm):
    """Round seat on four legs."""
    w, dp, h = d
    parts = [_cyl((0, 0, h - 0.025), (w, dp, 0.05), main, tex)]
    for a in np.arange(4) * np.pi / 2 + np.pi / 4:
        parts.append(_box((np.cos(a) * w * 0.33, np.sin(a) * dp * 0.33, (h - 0.05) / 2), (0.03, 0.03, h - 0.05), acc))
    return parts, []


def _couch(d, main, acc, tex, rng, prm):
    """Base with seat cushions, a back at -y and two arms (couch, armchair)."""
    w, dp, h = d
    a = float(rng.uniform(0.12, 0.22))
    b = float(rng.uniform(0.18, 0.25))
    sh = float(rng.uniform(0.40, 0.46))
    ci = 0.1   # cushion thickness
    sw = w - 2 * a
    parts = [_box((0, b / 2, (sh - ci) / 2), (sw, dp - b, sh - ci), _shade(main, 0.85), tex, scale=0.04),
             _box((0, -dp / 2 + b / 2, h / 2), (w, b, h), main, tex, scale=0.04)]
    for sx in (-1, 1):
        parts.append(_box((sx * (w / 2 - a / 2), b / 2, (sh + 0.18) / 2), (a, dp - b, sh + 0.18), main, tex,
                          scale=0.04))
    n = max(1, int(round(sw / 0.7)))
    cw = sw / n
    for i in range(n):
        parts.append(_box((-sw / 2 + cw * (i + 0.5), b / 2, sh - ci / 2), (cw - 0.01, dp - b, ci), main, tex,
                          scale=0.04))
    return parts, [Surface("seat", (0, b / 2, sh), (sw, dp - b))]


def _bed(d, main, acc, tex, rng, prm):
    """Frame, mattress, headboard at -y and a blanket over the foot end."""
    w, dp, h = d
    fh = float(rng.uniform(0.22, 0.32))
    mh = 0.2
    parts = [_box((0, 0.03, fh / 2), (w, dp - 0.06, fh), acc, "grain", scale=0.1),
             _box((0, -dp / 2 + 0.03, h / 2), (w, 0.06, h), acc, "grain", scale=0.1),
             _box((0, 0.03, fh + mh / 2), (w - 0.04, dp - 0.08, mh), (0.92, 0.92, 0.9), "noise", scale=0.05)]
    bl = dp - 0.06 - 0.55
    parts.append(_box((0, dp / 2 - bl / 2, fh + mh + 0.015), (w, bl, 0.03), main, tex,
                      color2=_shade(main, 0.7), scale=0.15))
    pillow_zone = (0, -dp / 2 + 0.06 + 0.26, fh + mh)
    return parts, [Surface("bed", pillow_zone, (w - 0.06, 0.48))]


def _shelf(d, main, acc, tex, rng, prm):
    """Open shelving: sides, back, top, plinth and evenly spaced boards; one surface per level."""
    w, dp, h = d
    t, plinth = 0.02, 0.06
    parts = [_box((sx * (w / 2 - t / 2), 0, h / 2), (t, dp, h), main, tex, scale=0.1) for sx in (-1, 1)]
    parts += [_box((0, -dp / 2 + t / 2, h / 2), (w - 2 * t, t, h), _shade(main, 0.8), tex, scale=0.1),
              _box((0, 0, h - t / 2), (w - 2 * t, dp, t), main, tex, scale=0.1),
              _box((0, 0, plinth / 2), (w - 2 * t, dp, plinth), main, tex, scale=0.1)]
    inner = h - t - plinth
    levels = max(2, int(round(inner / 0.34)))
    step = inner / levels
    surfaces = []
    for k in range(levels):
        z = plinth + k * step + (t / 2 if k else 0.0)
        if k:
            parts.append(_box((0, t / 2, plinth + k * step), (w - 2 * t, dp - t, t), main, tex, scale=0.1))
        clear = plinth + (k + 1) * step - (t / 2 if k + 1 < levels else t) - z
        surfaces.append(Surface("shelf", (0, t / 2 + 0.005, z), (w - 2 * t - 0.01, dp - t - 0.02), clear - 0.01))
    return parts, surfaces


def _lamp(d, main, acc, tex, rng, prm):
    """Disc base, thin pole and a conical shade."""
    w, dp, h = d
    sh = h * 0.38
    parts = [_cyl((0, 0, 0.015), (w * 0.6, dp * 0.6, 0.03), acc),
             _cyl((0, 0, (h - sh * 0.7) / 2), (0.025, 0.025, h - sh * 0.7), acc),
             _cyl((0, 0, h - sh / 2), (w, dp, sh), main, tex, taper=0.6, scale=0.03)]
    return parts, []


def _screen(d, main, acc, tex, rng, prm):
    """Stand, neck and a screen with a dark display face toward +y (monitor, tv)."""
    w, dp, h = d
    sh = h * 0.75
    disp = (0.04, 0.05, 0.07) if rng.random() < 0.7 else (0.1, 0.14, 0.2)
    parts = [_box((0, 0, 0.01), (w * 0.35, dp, 0.02), main),
             _box((0, -dp / 4, (h - sh) / 2 + 0.02), (0.06, 0.03, h - sh + 0.02), main),
             _box((0, 0, h - sh / 2), (w, 0.03, sh), main),
             _box((0, 0.0165, h - sh / 2), (w - 0.03, 0.003, sh - 0.03), disp, "noise", scale=0.2)]
    return parts, []


def _bin(d, main, acc, tex, rng, prm):
    """A slightly flared cylinder with a rim (trash can)."""
    w, dp, h = d
    taper = float(rng.uniform(*prm.get("taper", (1.0, 1.2))))
    return [_cyl((0, 0, h / 2), (w, dp, h), main, tex, taper=taper, scale=0.05),
            _cyl((0, 0, h + 0.01), (w * 1.03, dp * 1.03, 0.02), acc)], []


def _cup(d, main, acc, tex, rng, prm):
    """Cylinder body with a handle on +x."""
    w, dp, h = d
    return [_cyl((0, 0, h / 2), (w, dp, h), main, tex, scale=0.02),
            _box((w / 2 + 0.01, 0, h * 0.55), (0.02, 0.012, h * 0.5), main)], []


def _bottle(d, main, acc, tex, rng, prm):
    """Body, shoulder, neck and cap."""
    w, dp, h = d
    bh, sh, nh = 0.62 * h, 0.15 * h, 0.17 * h
    return [_cyl((0, 0, bh / 2), (w, dp, bh), main, tex, scale=0.03),
            _cyl((0, 0, bh + sh / 2), (w, dp, sh), main, taper=0.35),
            _cyl((0, 0, bh + sh + nh / 2), (w * 0.35, dp * 0.35, nh), main),
            _cyl((0, 0, h - 0.03 * h), (w * 0.4, dp * 0.4, 0.06 * h), acc)], []


def _bowl(d, main, acc, tex, rng, prm):
    """An inverted frustum."""
    w, dp, h = d
    return [_cyl((0, 0, h / 2), (w, dp, h), main, tex, taper=1.6)], []


def _plant(d, main, acc, tex, rng, prm):
    """A flared pot and one to three foliage ellipsoids (main colour = foliage)."""
    w, dp, h = d
    ph = h * float(rng.uniform(0.25, 0.4))
    parts = [_cyl((0, 0, ph / 2), (w * 0.6, dp * 0.6, ph), acc, "noise", taper=1.25, scale=0.05)]
    n = int(rng.integers(1, 4))
    fh = h - ph
    for i in range(n):
        s = 1.0 - 0.25 * i
        cz = ph + fh * (0.5 + 0.15 * i)
        size = (w * s, dp * s, min(fh * s, 2 * (h - cz), 2 * (cz - ph * 0.8)))
        parts.append(_ell((0.05 * w * np.sin(i * 2.1), 0.05 * dp * np.cos(i * 2.1), cz), size,
                          _shade(main, 1 + 0.1 * i), "noise", scale=0.06))
    return parts, []


def _pillow(d, main, acc, tex, rng, prm):
    """A flattened ellipsoid."""
    w, dp, h = d
    return [_ell((0, 0, h / 2), (w, dp, h), main, tex, color2=_shade(main, 0.7), scale=0.06)], []


def _toilet(d, main, acc, tex, rng, prm):
    """Pedestal, bowl, seat and a tank at -y."""
    w, dp, h = d
    td = 0.2 * dp
    parts = [_box((0, 0.05 * dp, 0.19), (w * 0.55, dp * 0.5, 0.38), main),
             _cyl((0, 0.12 * dp, 0.3), (w, dp * 0.7, 0.16), main, taper=1.08),
             _cyl((0, 0.12 * dp, 0.395), (w, dp * 0.72, 0.03), acc),
             _box((0, -dp / 2 + td / 2, (0.36 + h) / 2), (w * 0.95, td, h - 0.36), main)]
    return parts, []


def _sink(d, main, acc, tex, rng, prm):
    """Pedestal, basin and a faucet at -y."""
    w, dp, h = d
    bh = 0.16
    return [_cyl((0, -0.05, (h - bh) / 2), (0.18, 0.18, h - bh), main, taper=0.8),
            _box((0, 0, h - bh / 2), (w, dp, bh), main),
            _cyl((0, -dp / 2 + 0.06, h + 0.06), (0.04, 0.04, 0.12), acc)], []


def _door(d, main, acc, tex, rng, prm):
    """Panel with a knob (wall-mounted: back face at y = 0)."""
    w, dp, h = d
    return [_box((0, dp / 2, h / 2), (w, dp, h), main, tex, scale=0.15),
            _cyl((w / 2 - 0.09, dp + 0.03, 1.0), (0.05, 0.06, 0.05), acc, axis="y")], []


def _window(d, main, acc, tex, rng, prm):
    """Frame, a mullion and a pale glass pane (wall-mounted)."""
    w, dp, h = d
    f = 0.05
    glass = (0.62, 0.72, 0.8) if rng.random() < 0.6 else (0.85, 0.88, 0.9)
    parts = [_box((0, dp / 2, f / 2), (w, dp, f), main), _box((0, dp / 2, h - f / 2), (w, dp, f), main),
             _box((-w / 2 + f / 2, dp / 2, h / 2), (f, dp, h - 2 * f), main),
             _box((w / 2 - f / 2, dp / 2, h / 2), (f, dp, h - 2 * f), main),
             _box((0, dp / 2, h / 2), (0.04, dp * 0.8, h - 2 * f), main),
             _box((0, 0.0075, h / 2), (w - 2 * f, 0.015, h - 2 * f), glass, "noise", scale=0.3)]
    return parts, []


def _picture(d, main, acc, tex, rng, prm):
    """Frame (accent) and a textured canvas in random colours (wall-mounted)."""
    w, dp, h = d
    f = float(rng.uniform(0.02, 0.05))
    c1, c2 = rng.uniform(0.1, 0.95, 3), rng.uniform(0.1, 0.95, 3)
    ctex = ("stripes", "checker", "noise")[int(rng.integers(3))]
    return [_box((0, dp / 2, h / 2), (w, dp, h), acc),
            _box((0, dp + 0.002, h / 2), (w - 2 * f, 0.004, h - 2 * f), c1, ctex, color2=c2,
                 scale=float(rng.uniform(0.04, 0.15)))], []


def _whiteboard(d, main, acc, tex, rng, prm):
    """White board with a marker tray (wall-mounted)."""
    w, dp, h = d
    return [_box((0, dp / 2, h / 2), (w, dp, h), main, "noise", scale=0.4),
            _box((0, dp + 0.03, 0.01), (w * 0.8, 0.06, 0.02), acc)], []


def _clock(d, main, acc, tex, rng, prm):
    """Round rim and a pale face with two hands (wall-mounted, axis y)."""
    w, dp, h = d
    a1, a2 = rng.uniform(0, 2 * np.pi, 2)
    parts = [_cyl((0, dp / 2, h / 2), (w, dp, h), acc, axis="y"),
             _cyl((0, dp + 0.002, h / 2), (w * 0.88, 0.004, h * 0.88), main, axis="y")]
    for a, ln in ((a1, 0.3), (a2, 0.4)):
        cx, cz = np.sin(a) * w * ln / 2, h / 2 + np.cos(a) * h * ln / 2
        parts.append(_box((cx, dp + 0.006, cz), (max(abs(np.sin(a)) * w * ln, 0.008), 0.004,
                                                 max(abs(np.cos(a)) * h * ln, 0.008)), acc))
    return parts, []


def _radiator(d, main, acc, tex, rng, prm):
    """A ribbed panel (vertical stripes) on short brackets (wall-mounted)."""
    w, dp, h = d
    return [_box((0, dp / 2, h / 2), (w, dp, h), main, "stripes", color2=_shade(main, 0.8), scale=0.05)], []


def _keyboard(d, main, acc, tex, rng, prm):
    """A flat slab with a key checker pattern."""
    w, dp, h = d
    return [_box((0, 0, h / 2), (w, dp, h), main, "checker", color2=_shade(main, 1.6), scale=0.019)], []


def _laptop(d, main, acc, tex, rng, prm):
    """Base slab and an upright lid at -y with a dark display face."""
    w, dp, h = d
    return [_box((0, 0, 0.01), (w, dp, 0.02), main, "checker", color2=_shade(main, 0.7), scale=0.018),
            _box((0, -dp / 2 + 0.005, 0.02 + (h - 0.02) / 2), (w, 0.01, h - 0.02), main),
            _box((0, -dp / 2 + 0.0115, 0.02 + (h - 0.02) / 2), (w - 0.03, 0.003, h - 0.05), (0.05, 0.06, 0.09))], []


def _book(d, main, acc, tex, rng, prm):
    """An upright book: cover and a pale page block showing at the top."""
    w, dp, h = d
    return [_box((0, 0, (h - 0.004) / 2), (w, dp, h - 0.004), main, tex),
            _box((0, -0.005, h - 0.002), (w * 0.85, dp - 0.01, 0.004), (0.93, 0.9, 0.82))], []


def _backpack(d, main, acc, tex, rng, prm):
    """Main bag, a front pocket and a rounded top."""
    w, dp, h = d
    bh = h * 0.8
    return [_box((0, -dp * 0.1, bh / 2), (w, dp * 0.8, bh), main, tex, scale=0.04),
            _box((0, dp * 0.4, bh * 0.35), (w * 0.7, dp * 0.2, bh * 0.5), _shade(main, 0.8), tex, scale=0.04),
            _ell((0, -dp * 0.1, bh), (w, dp * 0.8, 2 * (h - bh)), main, tex, scale=0.04)], []


def _microwave(d, main, acc, tex, rng, prm):
    """Body, a dark door window and a control strip on the front."""
    w, dp, h = d
    return [_box((0, 0, h / 2), (w, dp, h), main),
            _box((-w * 0.1, dp / 2 + 0.002, h / 2), (w * 0.65, 0.004, h * 0.7), (0.08, 0.08, 0.09), "noise", scale=0.1),
            _box((w * 0.35, dp / 2 + 0.002, h / 2), (w * 0.2, 0.004, h * 0.7), acc, "stripes",
                 color2=_shade(acc, 1.8), scale=0.02)], []


TemplateFn = Callable[..., tuple[list[Part], list[Surface]]]
TEMPLATES: dict[str, TemplateFn] = {
    "block": _block, "cabinet": _cabinet, "table": _table, "chair": _chair, "office_chair": _office_chair,
    "stool": _stool, "couch": _couch, "bed": _bed, "shelf": _shelf, "lamp": _lamp, "screen": _screen,
    "bin": _bin, "cup": _cup, "bottle": _bottle, "bowl": _bowl, "plant": _plant, "pillow": _pillow,
    "toilet": _toilet, "sink": _sink, "door": _door, "window": _window, "picture": _picture,
    "whiteboard": _whiteboard, "clock": _clock, "radiator": _radiator, "keyboard": _keyboard,
    "laptop": _laptop, "book": _book, "backpack": _backpack, "microwave": _microwave,
}

# --------------------------------------------------------------------------------------
# The catalogue (data)
# --------------------------------------------------------------------------------------

WOOD = ((139, 94, 60), (160, 120, 80), (110, 75, 45), (196, 164, 122), (90, 62, 40), (214, 190, 150))
WHITES = ((236, 236, 232), (222, 220, 212), (205, 205, 205))
GREYS = ((60, 60, 64), (95, 95, 100), (140, 140, 145), (30, 30, 32))
FABRIC = ((70, 90, 140), (140, 60, 60), (90, 120, 80), (150, 140, 120), (60, 60, 62), (180, 150, 110), (120, 100, 140))
METAL = ((170, 170, 175), (120, 120, 125), (45, 45, 48))
BRIGHT = ((200, 40, 40), (40, 110, 200), (230, 190, 40), (40, 160, 80), (230, 120, 40), (150, 60, 160), (240, 240, 240))
GREENS = ((60, 120, 50), (80, 140, 60), (40, 95, 45), (100, 150, 70))
POTS = ((170, 90, 60), (200, 200, 195), (60, 60, 60), (150, 120, 90))
CARDBOARD = ((180, 140, 95), (160, 120, 80), (200, 165, 120))

_S = CategorySpec
CATALOGUE: tuple[CategorySpec, ...] = (
    # seating
    _S("chair", "chair", (0.40, 0.42, 0.80), (0.50, 0.52, 1.00), WOOD + GREYS[:2], WOOD + METAL, "grain"),
    _S("office chair", "office_chair", (0.50, 0.50, 0.90), (0.65, 0.65, 1.15), FABRIC + GREYS[:1], METAL[1:],
       "noise", placement="free"),
    _S("stool", "stool", (0.32, 0.32, 0.45), (0.40, 0.40, 0.75), WOOD + BRIGHT[:3], METAL, "grain",
       placement="free", round=True),
    _S("couch", "couch", (1.50, 0.80, 0.75), (2.30, 1.00, 0.95), FABRIC, texture="noise"),
    _S("armchair", "couch", (0.75, 0.75, 0.75), (0.95, 0.95, 1.00), FABRIC, texture="noise"),
    # tables
    _S("table", "table", (0.80, 0.60, 0.70), (1.60, 1.00, 0.78), WOOD + WHITES[:1], WOOD + METAL, "grain",
       placement="free"),
    _S("dining table", "table", (1.20, 0.80, 0.72), (1.90, 1.00, 0.78), WOOD, WOOD, "grain", placement="free"),
    _S("coffee table", "table", (0.80, 0.45, 0.35), (1.30, 0.70, 0.50), WOOD + GREYS[:1], WOOD + METAL, "grain",
       placement="free"),
    _S("desk", "table", (1.00, 0.55, 0.72), (1.60, 0.80, 0.78), WOOD + WHITES, METAL + WOOD, "grain",
       params={"pedestal": True}),
    # storage
    _S("bookshelf", "shelf", (0.60, 0.28, 1.20), (1.20, 0.40, 2.00), WOOD + WHITES[:1], texture="grain"),
    _S("shelf", "shelf", (0.80, 0.30, 0.60), (1.40, 0.45, 1.05), WOOD + WHITES[:1] + METAL[:1], texture="grain"),
    _S("cabinet", "cabinet", (0.60, 0.40, 0.70), (1.20, 0.60, 1.10), WOOD + WHITES + GREYS[1:3], METAL,
       "grain", params={"rows": (1, 1), "cols": (1, 2), "plinth": 0.05}),
    _S("nightstand", "cabinet", (0.40, 0.35, 0.45), (0.55, 0.45, 0.65), WOOD + WHITES[:1], METAL, "grain",
       params={"rows": (1, 3), "cols": (1, 1), "plinth": 0.04}),
    _S("dresser", "cabinet", (0.80, 0.42, 0.75), (1.50, 0.55, 1.05), WOOD + WHITES[:1], METAL + WOOD[2:3],
       "grain", params={"rows": (3, 4), "cols": (1, 2), "plinth": 0.05}),
    _S("refrigerator", "cabinet", (0.60, 0.62, 1.65), (0.85, 0.75, 1.90), WHITES + METAL[:1], METAL[1:],
       params={"rows": (2, 2), "cols": (1, 1)}),
    _S("kitchen counter", "cabinet", (1.20, 0.60, 0.88), (2.40, 0.66, 0.93), WOOD + WHITES, GREYS + WHITES,
       "grain", params={"rows": (1, 1), "cols": (2, 4), "plinth": 0.08, "counter": True}),
    _S("bed", "bed", (0.95, 1.95, 0.80), (1.80, 2.15, 1.20), FABRIC + WHITES[:1], WOOD, "stripes"),
    # bathroom and kitchen fixtures
    _S("toilet", "toilet", (0.37, 0.62, 0.72), (0.44, 0.74, 0.82), WHITES[:2], WHITES[:2]),
    _S("sink", "sink", (0.45, 0.38, 0.80), (0.65, 0.50, 0.90), WHITES[:2], METAL[:2]),
    _S("trash can", "bin", (0.22, 0.22, 0.30), (0.38, 0.38, 0.70), GREYS + METAL[:1] + BRIGHT[1:2],
       GREYS, placement="floor", round=True),
    _S("box", "block", (0.20, 0.15, 0.12), (0.60, 0.45, 0.45), CARDBOARD, ((200, 170, 120), (120, 90, 60)),
       "noise", placement="floor", params={"tape": True}),
    _S("backpack", "backpack", (0.28, 0.16, 0.38), (0.36, 0.24, 0.50), FABRIC + BRIGHT[:2], texture="noise",
       placement="floor"),
    _S("plant", "plant", (0.35, 0.35, 0.60), (0.60, 0.60, 1.20), GREENS, POTS),
    _S("lamp", "lamp", (0.20, 0.20, 0.35), (0.34, 0.34, 0.62), ((235, 225, 200), (230, 230, 230), (200, 180, 140)),
       METAL + WOOD[:1], placement="support", supports=("top",), round=True),
    # wall-mounted
    _S("door", "door", (0.80, 0.04, 2.00), (0.95, 0.05, 2.10), WOOD + WHITES, METAL, "grain",
       placement="wall_mounted", mount_z=(0.0, 0.0)),
    _S("window", "window", (0.80, 0.08, 1.00), (1.60, 0.12, 1.40), WHITES + GREYS[1:2], placement="wall_mounted",
       mount_z=(0.75, 1.05)),
    _S("picture", "picture", (0.30, 0.02, 0.25), (1.00, 0.04, 0.80), WOOD, WOOD + GREYS[:1] + ((200, 170, 60),),
       placement="wall_mounted", mount_z=(1.15, 1.55)),
    _S("whiteboard", "whiteboard", (1.00, 0.02, 0.70), (2.00, 0.03, 1.20), WHITES[:1], METAL,
       placement="wall_mounted", mount_z=(0.85, 1.0)),
    _S("clock", "clock", (0.25, 0.04, 0.25), (0.40, 0.06, 0.40), WHITES[:2], GREYS[:1] + WOOD[:1] + METAL[:1],
       placement="wall_mounted", mount_z=(1.7, 2.0)),
    _S("radiator", "radiator", (0.60, 0.08, 0.45), (1.20, 0.11, 0.65), WHITES, placement="wall_mounted",
       mount_z=(0.1, 0.15)),
    # small things on surfaces
    _S("monitor", "screen", (0.45, 0.18, 0.35), (0.70, 0.24, 0.55), GREYS[:1] + GREYS[3:] + METAL[:1],
       placement="support", supports=("top",)),
    _S("tv", "screen", (0.80, 0.22, 0.55), (1.30, 0.30, 0.85), GREYS[3:] + GREYS[:1], placement="support",
       supports=("top",)),
    _S("keyboard", "keyboard", (0.38, 0.12, 0.02), (0.46, 0.16, 0.03), GREYS[:1] + GREYS[3:] + WHITES[:1],
       placement="support", supports=("top",)),
    _S("laptop", "laptop", (0.30, 0.20, 0.20), (0.38, 0.26, 0.26), METAL + GREYS[3:], placement="support",
       supports=("top",)),
    _S("microwave", "microwave", (0.44, 0.34, 0.25), (0.55, 0.42, 0.32), WHITES + METAL[:1] + GREYS[3:],
       GREYS[:1], placement="support", supports=("top",)),
    _S("book", "book", (0.02, 0.14, 0.18), (0.06, 0.22, 0.30), BRIGHT + FABRIC, placement="support",
       supports=("shelf", "top")),
    _S("bottle", "bottle", (0.06, 0.06, 0.18), (0.09, 0.09, 0.32), BRIGHT + GREENS[:1] + ((200, 220, 230),),
       WHITES[:1] + GREYS[:1], placement="support", supports=("top", "shelf"), round=True),
    _S("cup", "cup", (0.07, 0.07, 0.08), (0.10, 0.10, 0.12), BRIGHT + WHITES[:1], placement="support",
       supports=("top", "shelf"), round=True),
    _S("bowl", "bowl", (0.14, 0.14, 0.06), (0.24, 0.24, 0.10), BRIGHT + WHITES[:1], placement="support",
       supports=("top", "shelf"), round=True),
    _S("potted plant", "plant", (0.14, 0.14, 0.20), (0.26, 0.26, 0.42), GREENS, POTS, placement="support",
       supports=("top", "shelf"), round=True),
    _S("pillow", "pillow", (0.40, 0.28, 0.10), (0.62, 0.42, 0.18), FABRIC + WHITES[:1], texture="stripes",
       placement="support", supports=("bed", "seat")),
)

_BY_NAME = {s.name: s for s in CATALOGUE}


def category_names() -> tuple[str, ...]:
    """All catalogue category names (ScanNet200 names)."""
    return tuple(s.name for s in CATALOGUE)


def spec(name: str) -> CategorySpec:
    """The catalogue row of a category; KeyError naming the category if it is not catalogued."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the synthetic catalogue; known: {sorted(_BY_NAME)}") from None


def validate_catalogue() -> None:
    """Check every category is a ScanNet200 name with a known template (KeyError/ValueError otherwise)."""
    for s in CATALOGUE:
        label_id(s.name)
        if s.template not in TEMPLATES:
            raise ValueError(f"{s.name}: unknown template {s.template!r}")


def _pick_color(palette: tuple[RGB, ...], rng: np.random.Generator, jitter: float = 10.0) -> np.ndarray:
    """(3,) float albedo in [0, 1]: a palette entry with per-channel Gaussian jitter (in 0..255 units)."""
    c = np.asarray(palette[int(rng.integers(len(palette)))], dtype=np.float64)
    return np.clip(c + rng.normal(0.0, jitter, 3), 0, 255) / 255.0


def make_object(name: str, rng: np.random.Generator) -> ObjectModel:
    """Sample one instance of a category: size within the spec ranges, colours from its palettes.

    Args:
        name: catalogue category (ScanNet200 name).
        rng: the random generator (the only source of randomness: same state -> same object).

    Returns:
        The :class:`ObjectModel`, parts in the object frame (front +y, bottom at z = 0).
    """
    s = spec(name)
    dims = rng.uniform(s.size_min, s.size_max)
    if s.round:
        dims[1] = dims[0]
    main, acc = _pick_color(s.palette, rng), _pick_color(s.accent, rng)
    parts, surfaces = TEMPLATES[s.template](tuple(float(x) for x in dims), main, acc, s.texture, rng, s.params)
    seeds = rng.integers(0, 2**31 - 1, len(parts))
    parts = tuple(replace(p, seed=int(k)) for p, k in zip(parts, seeds))
    return ObjectModel(name, parts, tuple(surfaces))
