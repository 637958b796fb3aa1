"""Synthetic ScanNet-style scenes: generate rooms, render walks, write ScanNet folders and bags.

    python -m training.data.synthetic --scenes N --seed S --out DIR [--frames 200] [--no-bag] [--workers W]
        [--rooms R] [--cloud-every K]

Scene ``i`` is ``synth{i:04d}_00``, generated from the seed :func:`scene_seed` (S, i), so scenes are
independent and the same (S, i) always gives the same scene. With ``--rooms R`` (R > 1) scene ``i``
is the apartment ``apt{i:04d}_00`` (:func:`generate_apartment`): R rooms side by side walked room
by room, its first room being the room of ``synth{i:04d}_00``; with 8 rooms and 400 frames its
fused map grows past 1M points in 8 clouds (``--cloud-every 50``). Each scene goes to
``DIR/<scene_id>/`` in ScanNet's layout (:func:`training.data.scannet_writer.write_scannet_scene`, with
per-pixel GT ``instance/<i>.png``) plus ``synth_meta.json`` (seed, theme, counts, per-stage
timings), written last: a folder holding it is complete and is skipped on a re-run. Unless
``--no-bag``, the frames and the fused clouds also go to a ROS 2 bag ``DIR/bags/<scene_id>``
(:func:`training.data.rosbag_io.write_bag`). ``DIR/summary.json`` lists the scenes, the frame
count and the instances per class.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.atomic import write_json_atomic
from training.data.rosbag_io import write_bag
from training.data.synth_apartment import (APARTMENT_MAX_VERTICES, APARTMENT_SPACING, APARTMENT_STRUCTURE_SPACING,
                                           MAX_ROOMS, apartment_path, build_apartment_mesh, sample_apartment)
from training.data.synth_layout import THEMES, sample_layout
from training.data.synth_render import (FPS, HEIGHT, INTRINSICS, MAX_VERTICES, OBJECT_SPACING, STRUCTURE_SPACING,
                                        WIDTH, RenderedWalk, build_scene_mesh, camera_path, fused_clouds)
from training.data.scannet_writer import write_scannet_scene
from training.data.types import Frame, SceneMesh

META_FILE = "synth_meta.json"
SUMMARY_FILE = "summary.json"
BAG_DIR = "bags"
FOLK_TEST_RUN_SEED = 600
"""The run seed of models/folk-synth's held-out test scenes (scripts/train_bundle.sh; the bundle's manifest
records it): never trained or tuned on."""

Cloud = tuple[float, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SynthConfig:
    """Generation settings (defaults give ScanNet-like scenes).

    Attributes:
        num_frames: frames of the camera walk.
        width, height: image size (px); intrinsics are ScanNet's depth camera scaled to it.
        fps: frame rate of the stamps (frame i at i / fps seconds).
        spacing: vertex spacing on objects (m).
        structure_spacing: vertex spacing on floor and walls (m).
        max_vertices: mesh vertex budget of each room (spacings grow above it).
        cloud_every: a fused cloud after every this many frames (and after the last).
        cloud_stride: pixel stride of the cheap visibility pass behind the fused clouds.
        theme: room theme (a key of ``synth_layout.THEMES``; of the first room of an apartment);
            random per scene when None.
        rooms: rooms per scene; 1 = a single-room scene (:func:`generate_scene`), more = an
            apartment (:func:`generate_apartment`, ``num_frames`` split over the rooms).
    """

    num_frames: int = 200
    width: int = WIDTH
    height: int = HEIGHT
    fps: float = FPS
    spacing: float = OBJECT_SPACING
    structure_spacing: float = STRUCTURE_SPACING
    max_vertices: int = MAX_VERTICES
    cloud_every: int = 50
    cloud_stride: int = 4
    theme: str | None = None
    rooms: int = 1

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not 1 <= self.rooms <= MAX_ROOMS:
            raise ValueError(f"rooms must be in 1..{MAX_ROOMS}, got {self.rooms}")
        if self.num_frames < self.rooms:
            raise ValueError(f"need at least one frame per room: {self.num_frames} frames for {self.rooms} rooms")
        if self.cloud_every < 1 or self.cloud_stride < 1:
            raise ValueError(f"cloud_every and cloud_stride must be >= 1, got {self.cloud_every}, {self.cloud_stride}")
        if self.width < 8 or self.height < 8:
            raise ValueError(f"image size must be at least 8 x 8, got {self.width} x {self.height}")
        if self.theme is not None and self.theme not in THEMES:
            raise ValueError(f"unknown theme {self.theme!r}; known: {sorted(THEMES)}")

    def intrinsics(self) -> np.ndarray:
        """(3, 3) ScanNet depth intrinsics scaled from 640 x 480 to (width, height)."""
        k = INTRINSICS.copy()
        sx, sy = self.width / WIDTH, self.height / HEIGHT
        k[0, 0], k[1, 1] = k[0, 0] * sx, k[1, 1] * sy
        k[0, 2], k[1, 2] = (k[0, 2] + 0.5) * sx - 0.5, (k[1, 2] + 0.5) * sy - 0.5
        return k


def apartment_config(**overrides) -> SynthConfig:
    """:class:`SynthConfig` of apartments: the finer ``synth_apartment.APARTMENT_*`` spacings and per-room
    vertex budget (8 rooms, 400 frames: a fused map of > 1M points), then ``overrides``."""
    return SynthConfig(**{"spacing": APARTMENT_SPACING, "structure_spacing": APARTMENT_STRUCTURE_SPACING,
                          "max_vertices": APARTMENT_MAX_VERTICES, **overrides})


def scene_seed(seed: int, index: int) -> int:
    """The seed of scene ``index`` of a run seeded ``seed`` (independent streams via SeedSequence)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got {seed}, {index}")
    hi, lo = np.random.SeedSequence([seed, index]).generate_state(2)
    return (int(hi) << 32) | int(lo)


def scene_name(index: int, rooms: int = 1) -> str:
    """``synth{index:04d}_00`` for a single room, ``apt{index:04d}_00`` for an apartment (rooms > 1)."""
    return f"synth{index:04d}_00" if rooms == 1 else f"apt{index:04d}_00"


def generate_scene(seed: int, scene_id: str, num_frames: int = 200, config: SynthConfig | None = None,
                   timings: dict | None = None) -> tuple[SceneMesh, RenderedWalk, list[Cloud]]:
    """Generate one scene in memory.

    Args:
        seed: the scene's seed; everything (layout, textures, light, walk) follows from it.
        scene_id: e.g. ``synth0003_00``.
        num_frames: frames of the walk (overrides ``config.num_frames``).
        config: other settings (``config.rooms`` is ignored: one room).
        timings: if given, filled with seconds per stage (layout, meshing, camera, clouds).

    Returns:
        (mesh, frames, clouds): the GT mesh; the walk's frames as a lazy re-iterable sequence of
        :class:`Frame` (rendered when read, with ``instance`` set); the fused clouds
        ``[(stamp, xyz (k, 3) float32, rgb (k, 3) uint8)]`` along the walk.
    """
    cfg = SynthConfig(**{**asdict(config or SynthConfig()), "num_frames": num_frames, "rooms": 1})
    r_layout, r_mesh, r_cam = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    t = {} if timings is None else timings
    t0 = time.perf_counter()
    layout = sample_layout(r_layout, cfg.theme)
    t1 = time.perf_counter()
    mesh = build_scene_mesh(layout, scene_id, r_mesh, cfg.spacing, cfg.structure_spacing, cfg.max_vertices)
    t2 = time.perf_counter()
    poses = camera_path(layout, cfg.num_frames, r_cam)
    walk = RenderedWalk(mesh, poses, cfg.intrinsics(), cfg.width, cfg.height, cfg.fps, layout=layout)
    t3 = time.perf_counter()
    clouds = fused_clouds(walk, cfg.cloud_every, cfg.cloud_stride)
    t4 = time.perf_counter()
    t.update(layout=t1 - t0, meshing=t2 - t1, camera=t3 - t2, clouds=t4 - t3)
    return mesh, walk, clouds


def generate_apartment(seed: int, rooms: int, num_frames: int = 400, config: SynthConfig | None = None,
                       scene_id: str = "apt0000_00", timings: dict | None = None,
                       progress: bool = False) -> tuple[SceneMesh, RenderedWalk, list[Cloud]]:
    """Generate a multi-room apartment in memory (nothing is written).

    The same three random streams as :func:`generate_scene` serve all rooms in turn, so the first
    room's layout is the room of ``generate_scene(seed, ...)``, and ``rooms=1`` with the same config
    (e.g. ``SynthConfig()``) gives exactly that scene.

    Args:
        seed: the apartment's seed; everything follows from it.
        rooms: number of rooms (overrides ``config.rooms``); laid out by
            :func:`~training.data.synth_apartment.sample_apartment`.
        num_frames: frames of the whole walk, split evenly over the rooms (overrides ``config.num_frames``).
        config: other settings (default :func:`apartment_config`: a denser mesh than single scenes);
            ``max_vertices`` is the budget of each room.
        scene_id: id of the mesh.
        timings: if given, filled with seconds per stage (layout, meshing, camera, clouds).
        progress: show tqdm bars for meshing and the fused-cloud pass.

    Returns:
        (mesh, walk, clouds) as :func:`generate_scene`; ``walk.layout`` is the
        :class:`~training.data.synth_apartment.Apartment`; the clouds grow room by room, each a
        superset of the previous one.
    """
    cfg = SynthConfig(**{**asdict(config or apartment_config()), "num_frames": num_frames, "rooms": rooms})
    r_layout, r_mesh, r_cam = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    t = {} if timings is None else timings
    t0 = time.perf_counter()
    apartment = sample_apartment(r_layout, cfg.rooms, cfg.theme)
    t1 = time.perf_counter()
    mesh = build_apartment_mesh(apartment, scene_id, r_mesh, cfg.spacing, cfg.structure_spacing, cfg.max_vertices,
                                progress)
    t2 = time.perf_counter()
    poses = apartment_path(apartment, cfg.num_frames, r_cam)
    walk = RenderedWalk(mesh, poses, cfg.intrinsics(), cfg.width, cfg.height, cfg.fps, layout=apartment)
    t3 = time.perf_counter()
    clouds = fused_clouds(walk, cfg.cloud_every, cfg.cloud_stride, progress)
    t4 = time.perf_counter()
    t.update(layout=t1 - t0, meshing=t2 - t1, camera=t3 - t2, clouds=t4 - t3)
    return mesh, walk, clouds


_END = object()


def broadcast(items: Iterable, consumers: list[Callable[[Iterator], None]], depth: int = 4) -> None:
    """Stream one iterable to several consumers, each running in its own thread behind a bounded queue.

    The producer (this thread) reads ``items`` once; at most ``depth`` items wait per consumer.
    A consumer that stops early or fails no longer receives items; the first error is re-raised.
    """
    if len(consumers) == 1:
        consumers[0](iter(items))
        return
    queues = [queue.Queue(maxsize=depth) for _ in consumers]
    errors: list[BaseException] = []

    def drain(q: queue.Queue) -> Iterator:
        while (item := q.get()) is not _END:
            yield item

    def run(consume, q):
        try:
            consume(drain(q))
        except BaseException as e:  # noqa: BLE001 - re-raised in the producer
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c, q), daemon=True) for c, q in zip(consumers, queues)]
    for th in threads:
        th.start()

    def put(q: queue.Queue, th: threading.Thread, item) -> None:
        while th.is_alive():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    try:
        for item in items:
            if errors:
                break
            for q, th in zip(queues, threads):
                put(q, th, item)
    finally:
        for q, th in zip(queues, threads):
            put(q, th, _END)
        for th in threads:
            th.join()
    if errors:
        raise errors[0]


def bag_path(out_dir: Path, scene_id: str) -> Path:
    """Where a scene's bag goes: ``<out>/bags/<scene_id>`` (a rosbag2 folder)."""
    return Path(out_dir) / BAG_DIR / scene_id


def is_scene_complete(out_dir: Path, scene_id: str, bag: bool) -> bool:
    """True when the scene folder (and, if wanted, its bag) were fully written by :func:`write_scene`."""
    meta = Path(out_dir) / scene_id / META_FILE
    if not meta.exists():
        return False
    return not bag or json.loads(meta.read_text(encoding="utf-8")).get("bag", False)


def write_scene(out_dir: Path, mesh: SceneMesh, frames: Iterable[Frame], clouds: Iterable[Cloud] = (),
                bag: bool = True, meta: dict | None = None) -> dict:
    """Write one scene: ScanNet folder ``<out>/<scene_id>`` and (if ``bag``) ``<out>/bags/<scene_id>``.

    Frames are rendered once and streamed to both writers (:func:`broadcast`). ``synth_meta.json``
    (``meta`` plus the timings) is written last and marks the scene complete.

    Returns:
        {"writing": seconds of writing beyond rendering, "rendering": seconds spent rendering frames}.
    """
    out_dir = Path(out_dir)
    scene_dir = out_dir / mesh.scene_id
    (scene_dir / META_FILE).unlink(missing_ok=True)
    consumers = [lambda it: write_scannet_scene(scene_dir, mesh, it, overwrite=True)]
    if bag:
        bp = bag_path(out_dir, mesh.scene_id)
        shutil.rmtree(bp, ignore_errors=True)
        bp.parent.mkdir(parents=True, exist_ok=True)
        consumers.append(lambda it: write_bag(bp, it, clouds))
    render0 = getattr(frames, "render_seconds", 0.0)
    t0 = time.perf_counter()
    broadcast(frames, consumers)
    total = time.perf_counter() - t0
    rendering = getattr(frames, "render_seconds", 0.0) - render0
    timings = {"rendering": rendering, "writing": total - rendering}
    record = {**(meta or {}), "scene_id": mesh.scene_id, "bag": bool(bag),
              "timings": {**(meta or {}).get("timings", {}), **timings}}
    write_json_atomic(scene_dir / META_FILE, record)
    return timings


def run_scene(out_dir: str, seed: int, index: int, config: SynthConfig, bag: bool) -> dict:
    """Generate and write scene ``index`` of a run seeded ``seed`` unless it is complete; returns its meta.

    ``config.rooms`` > 1 makes the apartment ``apt{index:04d}_00`` (same seed as the single scene)."""
    sid = scene_name(index, config.rooms)
    meta_path = Path(out_dir) / sid / META_FILE
    if is_scene_complete(Path(out_dir), sid, bag):
        return json.loads(meta_path.read_text(encoding="utf-8"))
    s = scene_seed(seed, index)
    timings: dict = {}
    t0 = time.perf_counter()
    if config.rooms == 1:
        mesh, walk, clouds = generate_scene(s, sid, config.num_frames, config, timings)
        layout_meta = {"theme": walk.layout.theme, "objects": len(walk.layout.objects)}
    else:
        mesh, walk, clouds = generate_apartment(s, config.rooms, config.num_frames, config, sid, timings)
        layout_meta = {"theme": "apartment", "objects": walk.layout.num_objects, **walk.layout.meta()}
    counts = Counter(mesh.instance_labels.values())
    meta = {"seed": s, "run_seed": seed, "index": index, **layout_meta, "frames": len(walk),
            "vertices": mesh.num_vertices, "faces": int(len(mesh.faces)),
            "clouds": len(clouds), "cloud_points": [len(c[1]) for c in clouds],
            "instances": {str(k): v for k, v in sorted(mesh.instance_labels.items())},
            "instances_per_class": dict(sorted(counts.items())), "config": asdict(config), "timings": timings}
    write_scene(Path(out_dir), mesh, walk, clouds, bag=bag, meta=meta)
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["timings"]["total"] = time.perf_counter() - t0
    meta_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return meta


def summarize(metas: list[dict]) -> dict:
    """summary.json content: scene ids, total frames, instances per class (all scenes), per-scene rows."""
    per_class: Counter = Counter()
    for m in metas:
        per_class.update(m["instances_per_class"])
    return {"scenes": [m["scene_id"] for m in metas], "num_scenes": len(metas),
            "frames": int(sum(m["frames"] for m in metas)),
            "instances_per_class": dict(sorted(per_class.items(), key=lambda kv: (-kv[1], kv[0]))),
            "per_scene": [{k: m[k] for k in ("scene_id", "seed", "theme", "frames", "vertices", "objects", "timings")}
                          for m in metas]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.data.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, required=True, help="number of scenes")
    p.add_argument("--seed", type=int, default=0, help="run seed; scene i uses scene_seed(seed, i)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--frames", type=int, default=200, help="frames per scene walk")
    p.add_argument("--start", type=int, default=0, help="index of the first scene")
    p.add_argument("--theme", choices=sorted(THEMES), default=None,
                   help="room theme, of the first room of an apartment (default: random per scene)")
    p.add_argument("--rooms", type=int, default=1,
                   help="rooms per scene; > 1 makes apartments apt<i>_00 walked room by room (frames split over rooms)")
    p.add_argument("--cloud-every", type=int, default=SynthConfig.cloud_every,
                   help="emit a fused map cloud after every this many frames (and after the last)")
    p.add_argument("--no-bag", action="store_true", help="do not write ROS 2 bags")
    p.add_argument("--workers", type=int, default=1, help="parallel scene processes")
    args = p.parse_args(argv)
    if args.scenes < 1 or args.frames < 1 or args.workers < 1 or args.start < 0 or args.cloud_every < 1:
        p.error("--scenes, --frames, --workers and --cloud-every must be >= 1 and --start >= 0")
    if not 1 <= args.rooms <= MAX_ROOMS or args.frames < args.rooms:
        p.error(f"--rooms must be in 1..{MAX_ROOMS} and at most --frames")
    return args


def run(argv: list[str] | None = None) -> dict:
    """CLI entry point; returns the summary it writes."""
    args = parse_args(argv)
    settings = dict(num_frames=args.frames, theme=args.theme, rooms=args.rooms, cloud_every=args.cloud_every)
    cfg = SynthConfig(**settings) if args.rooms == 1 else apartment_config(**settings)
    args.out.mkdir(parents=True, exist_ok=True)
    indices = range(args.start, args.start + args.scenes)
    bag = not args.no_bag
    metas = []
    bar = tqdm(total=len(indices), desc="synthetic scenes", unit="scene")
    if args.workers == 1:
        for i in indices:
            metas.append(run_scene(str(args.out), args.seed, i, cfg, bag))
            bar.update()
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_scene, str(args.out), args.seed, i, cfg, bag) for i in indices]
            for fut in as_completed(futures):
                metas.append(fut.result())
                bar.update()
    bar.close()
    metas.sort(key=lambda m: m["scene_id"])
    summary = {"run_seed": args.seed, "config": asdict(cfg), "bags": bag, **summarize(metas)}
    write_json_atomic(args.out / SUMMARY_FILE, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    """The command line: :func:`run`; 0 when the run completed (errors raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
