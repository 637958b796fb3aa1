"""Multi-room apartments of the synthetic world: rooms side by side, meshed and walked room by room.

An :class:`Apartment` is R closed rooms (each a :class:`~training.data.synth_layout.Layout` sampled
by :func:`~training.data.synth_layout.sample_layout` in its own room frame) placed in one row
(R <= 3) or two rows (:func:`place_rooms`), :data:`ROOM_GAP` apart, each room keeping its own four
walls (the gap is the partition between them). Rows are walked in a serpentine (row 0 left to right, row 1 right to
left), so room k+1 is always next to room k. All rooms share the first room's height: a camera
below the wall tops of its own room then never sees into another room over them, so the fused
map of a walk grows strictly room by room.

- :func:`sample_apartment`: themes (the first room's as for a single scene, then the unused
  themes first), layouts and room origins.
- :func:`build_apartment_mesh`: each room meshed by :func:`~training.data.synth_render.build_scene_mesh`
  (own vertex budget, own ceiling lamp), moved to its origin, instance and segment ids offset
  so that they are unique across the apartment.
- :func:`apartment_path`: the single-room walk of each room, one after the other (the camera
  jumps from the end of one room's loop to the start of the next one's).

With one room every function reproduces the single-room scene bit for bit when given the same
random streams (see ``training.data.synthetic.generate_apartment``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from training.data.synth_layout import THEMES, Layout, sample_layout
from training.data.synth_render import MAX_VERTICES, OBJECT_SPACING, STRUCTURE_SPACING, build_scene_mesh, camera_path
from training.data.types import SceneMesh

ROOM_GAP = 0.2          # m between the walls of neighbouring rooms (a partition wall's thickness)
MAX_ROOMS = 64
# Apartment mesh density. A room walk observes about half of its mesh (walls above ~1.6 m, backs and
# undersides of furniture stay unseen), so at the single-room spacings (2 cm / 3.5 cm) 8 rooms give a
# ~1.3M-vertex mesh but a ~0.65M-point fused map. 1.35 cm on objects and 2.25 cm on floor and walls
# (per-room budget 500k vertices) give fused maps of 1.23M-1.53M points for 8 rooms / 400 frames (9 seeds,
# 2.5M-2.8M mesh vertices) and 1.02M-1.07M for 6 rooms / 300 frames (4 seeds).
APARTMENT_SPACING = 0.0135
APARTMENT_STRUCTURE_SPACING = 0.0225
APARTMENT_MAX_VERTICES = 500_000
HEIGHT_MARGIN = 0.05    # m between the top of the tallest object and the wall tops (as in synth_layout)
_HEIGHT_TRIES = 20


@dataclass(frozen=True)
class Apartment:
    """Rooms placed side by side in the world frame (metres, z up).

    Attributes:
        rooms: one :class:`Layout` per room, in walking order, each in its own room frame
            (``[0, width] x [0, depth]``; object positions are room-frame positions).
        origins: world (x, y) of each room frame's origin; a room-frame point p is at
            ``p + (x, y, 0)`` in the world.
    """

    rooms: tuple[Layout, ...]
    origins: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.rooms:
            raise ValueError("an apartment needs at least one room")
        if len(self.origins) != len(self.rooms):
            raise ValueError(f"{len(self.rooms)} rooms but {len(self.origins)} origins")

    @property
    def themes(self) -> tuple[str, ...]:
        return tuple(r.theme for r in self.rooms)

    @property
    def num_objects(self) -> int:
        return sum(len(r.objects) for r in self.rooms)

    def bounds(self) -> np.ndarray:
        """(R, 2, 2) world floor rectangles ``[[x_min, y_min], [x_max, y_max]]`` of the rooms."""
        lo = np.asarray(self.origins, dtype=np.float64)
        size = np.array([[r.room.width, r.room.depth] for r in self.rooms])
        return np.stack([lo, lo + size], axis=1)

    def room_of(self, xy: np.ndarray) -> np.ndarray:
        """(n,) int64 index of the room whose floor rectangle holds each world point ``xy`` (n, >=2); -1 outside."""
        xy = np.asarray(xy, dtype=np.float64)[:, :2]
        b = self.bounds()
        inside = ((xy[:, None] >= b[None, :, 0] - 1e-6) & (xy[:, None] <= b[None, :, 1] + 1e-6)).all(-1)   # (n, R)
        return np.where(inside.any(1), inside.argmax(1), -1).astype(np.int64)

    def meta(self) -> dict:
        """JSON-ready summary: room count, themes, objects per room, world floor rectangles."""
        return {"rooms": len(self.rooms), "room_themes": list(self.themes),
                "room_objects": [len(r.objects) for r in self.rooms],
                "room_bounds": np.round(self.bounds(), 4).tolist()}


def grid_shape(rooms: int) -> tuple[int, int]:
    """(rows, columns) of the room grid: one row up to 3 rooms, else two rows (the first one fuller)."""
    if not 1 <= rooms <= MAX_ROOMS:
        raise ValueError(f"rooms must be in 1..{MAX_ROOMS}, got {rooms}")
    rows = 1 if rooms <= 3 else 2
    return rows, -(-rooms // rows)


def place_rooms(sizes: np.ndarray, gap: float = ROOM_GAP) -> np.ndarray:
    """(R, 2) origins of rooms of floor ``sizes`` (R, 2) (width, depth) in walking order.

    Rows of :func:`grid_shape` columns, neighbouring rooms ``gap`` apart: row 0 runs left to right
    with the far walls (y max) of its rooms in line, row 1 runs right to left along that line,
    right-aligned with row 0 (a serpentine: room k+1 is always next to room k). One room sits at
    the origin.
    """
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    _, cols = grid_shape(len(sizes))
    origins = np.zeros((len(sizes), 2))
    line = sizes[:cols, 1].max()          # y of the far walls of row 0
    for row, start in enumerate(range(0, len(sizes), cols)):
        idx = np.arange(start, min(start + cols, len(sizes)))
        if row % 2:                       # serpentine: this row's first room sits at its right end
            idx = idx[::-1]
        w = sizes[idx, 0]
        origins[idx, 0] = np.concatenate([[0.0], np.cumsum(w[:-1] + gap)])
        origins[idx, 1] = line - sizes[idx, 1] if row == 0 else line + gap
    if len(sizes) > cols:                 # right-align row 1 so that rooms cols-1 and cols face each other
        second = np.arange(cols, len(sizes))
        origins[second, 0] += (origins[cols - 1, 0] + sizes[cols - 1, 0]) - (origins[cols, 0] + sizes[cols, 0])
    return origins


def _with_height(layout: Layout, height: float) -> Layout | None:
    """``layout`` with its room walls ``height`` high, or None when an object would reach above them."""
    top = max(p.z_range()[1] for p in layout.objects)
    if top > height - HEIGHT_MARGIN:
        return None
    return replace(layout, room=replace(layout.room, height=height))


def sample_apartment(rng: np.random.Generator, rooms: int, theme: str | None = None) -> Apartment:
    """Sample an apartment of ``rooms`` rooms, each with its own theme and 8-30 objects.

    Room 0 is exactly ``sample_layout(rng, theme)`` (so one room gives the single-room layout);
    each further room takes a theme not used yet (all used: any), drawn from ``rng``, and is
    resampled until its objects fit under room 0's height.

    Raises:
        ValueError: bad room count or theme. RuntimeError: a room never fits under the height.
    """
    grid_shape(rooms)
    first = sample_layout(rng, theme)
    layouts = [first]
    for _ in range(1, rooms):
        used = {lay.theme for lay in layouts}
        pool = [t for t in sorted(THEMES) if t not in used] or sorted(THEMES)
        name = pool[int(rng.integers(len(pool)))]
        for _try in range(_HEIGHT_TRIES):
            fitted = _with_height(sample_layout(rng, name), first.room.height)
            if fitted is not None:
                break
        else:
            raise RuntimeError(f"no {name} layout fits under {first.room.height:.2f} m after {_HEIGHT_TRIES} tries")
        layouts.append(fitted)
    sizes = np.array([[lay.room.width, lay.room.depth] for lay in layouts])
    origins = tuple((float(x), float(y)) for x, y in place_rooms(sizes))
    return Apartment(tuple(layouts), origins)


def merge_meshes(meshes: list[SceneMesh], origins: np.ndarray, scene_id: str) -> SceneMesh:
    """One :class:`SceneMesh` of room meshes moved by ``origins`` (R, 2); instance and segment ids
    of room k are offset by those of the rooms before it (instance ids stay 1-based and unique)."""
    if len(meshes) == 1 and not np.any(origins):
        return replace(meshes[0], scene_id=scene_id)
    verts, faces, inst, seg, labels = [], [], [], [], {}
    v_off = i_off = s_off = 0
    for m, (ox, oy) in zip(meshes, np.asarray(origins, dtype=np.float64)):
        verts.append((m.vertices + np.array([ox, oy, 0.0])).astype(np.float32))
        faces.append(m.faces + v_off)
        inst.append(m.instance_ids + i_off)
        seg.append(m.segments + s_off)
        labels.update({k + i_off: name for k, name in m.instance_labels.items()})
        v_off += m.num_vertices
        i_off += max(m.instance_labels, default=0)
        s_off += int(m.segments.max(initial=-1)) + 1
    return SceneMesh(scene_id=scene_id, vertices=np.concatenate(verts),
                     colors=np.concatenate([m.colors for m in meshes]), faces=np.concatenate(faces),
                     semantic_ids=np.concatenate([m.semantic_ids for m in meshes]),
                     instance_ids=np.concatenate(inst), segments=np.concatenate(seg), instance_labels=labels)


def build_apartment_mesh(apartment: Apartment, scene_id: str, rng: np.random.Generator,
                         spacing: float = OBJECT_SPACING, structure_spacing: float = STRUCTURE_SPACING,
                         max_vertices: int = MAX_VERTICES, progress: bool = False) -> SceneMesh:
    """Mesh every room with :func:`build_scene_mesh` (``max_vertices`` is the budget of each room,
    so the apartment's grows with the room count) and merge them in world coordinates.

    Instances: room 0 as in a single scene (1 = floor, 2-5 = walls, then objects); room k's ids
    follow room k-1's. ``rng`` (light placement) is used by the rooms in order.
    """
    meshes = [build_scene_mesh(lay, scene_id, rng, spacing, structure_spacing, max_vertices)
              for lay in tqdm(apartment.rooms, desc="meshing rooms", unit="room", disable=not progress)]
    return merge_meshes(meshes, np.asarray(apartment.origins), scene_id)


def split_frames(num_frames: int, rooms: int) -> list[int]:
    """Frames per room: ``num_frames`` split evenly, the first rooms taking the remainder."""
    if num_frames < rooms:
        raise ValueError(f"need at least one frame per room: {num_frames} frames for {rooms} rooms")
    base, extra = divmod(num_frames, rooms)
    return [base + (k < extra) for k in range(rooms)]


def apartment_path(apartment: Apartment, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T, 4, 4) camera-to-world poses: :func:`camera_path` of each room in turn (frames split by
    :func:`split_frames`), moved to the room's origin. ``rng`` is used by the rooms in order."""
    poses = []
    for lay, (ox, oy), n in zip(apartment.rooms, apartment.origins, split_frames(num_frames, len(apartment.rooms))):
        p = camera_path(lay, n, rng)
        p[:, 0, 3] += ox
        p[:, 1, 3] += oy
        poses.append(p)
    return np.concatenate(poses)
