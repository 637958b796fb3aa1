"""Latency of the folk_segmenter node per cloud, by stage, at 50k / 100k / 200k points (CPU by default).

Runs exactly what the node's subscription callback and worker run for one cloud, in process, on one
worker thread after loading the model on a thread of its own, as the node does
(:mod:`folk_ros.core.torch_threads`), and without a ROS graph: PointCloud2 -> ``cloud_from_msg`` (convert)
-> ``fit_point_budget`` (downsample, only above max_points) -> ``Segmenter.segment`` (text, proposals: the
Mask3D network, postprocess: mask threshold + DBSCAN split + NMS, student, classify) ->
``build_outputs`` (messages; the labeled cloud on a helper thread, as the worker does) -> ``serialize_message``
of the three outputs (serialize, the CPU part of publishing). DDS transport is not included (over loopback a 200k-point
cloud takes ~30-50 ms stamp-to-callback, see the shared ROS 2 notes).

The clouds are box rooms (floor, four walls, eight boxes) sampled uniformly over their surface area, so a
bigger cloud is a denser scan of the same room, like a fused map; then ``--scenes`` held-out synthetic rooms
(``training.data.synthetic``, the run seed of models/folk-synth's test split), whole-scene clouds of the
kind the bundle's Mask3D was trained on (106-194k points). The default model is an UNTRAINED bundle
(``training.untrained_bundle``, random weights: same architecture and cost as a trained one, labels
meaningless) of ``--size`` small (the test double) or real (official Mask3D, ViT-L-14-336, 200 names).

Besides the per-cloud stages it reports what a robot pays once: the bundle's load time
(``Segmenter.from_bundle``), the first text encoding of the vocabulary, and the process's peak RSS.

Usage::

    python -m bench.bench_node_latency [--sizes 50000 100000 200000] [--repeats 3] [--threads 2]
                                       [--bundle models/folk-synth | --size real] [--vocabulary bundle]
                                       [--device cpu] [--max-points 200000] [--scenes 3]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from rclpy.serialization import serialize_message
from std_msgs.msg import Header
from tqdm import tqdm

from folk_ros.core import torch_threads
from folk_ros.core.bundle import read_manifest
from folk_ros.core.cloud import fit_point_budget
from folk_ros.core.segmenter import Segmenter
from folk_ros.ros import parameters as params
from folk_ros.ros.cloud_outputs import build_outputs
from folk_ros.ros.conversions import cloud_from_msg, cloud_to_msg
from training.atomic import write_json_atomic
from training.data.synthetic import FOLK_TEST_RUN_SEED, generate_scene, scene_name, scene_seed
from training.untrained_bundle import SIZES, make_untrained_bundle

BENCH_VOCABULARY = ("chair", "table", "couch", "bed", "cabinet", "shelf", "lamp", "plant")
STAGES = ("convert", "downsample", "text", "proposals", "postprocess", "student", "classify", "messages", "serialize")


def room_cloud(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) float32 xyz and (n, 3) uint8 rgb sampled uniformly over a 6 x 5 x 2.5 m room with 8 boxes."""
    rng = np.random.default_rng(seed)
    # axis-aligned rectangles: (origin (3,), edge u (3,), edge v (3,)), colour
    rects = [((0, 0, 0), (6, 0, 0), (0, 5, 0), (150, 150, 150)),          # floor
             ((0, 0, 0), (6, 0, 0), (0, 0, 2.5), (220, 220, 210)), ((0, 5, 0), (6, 0, 0), (0, 0, 2.5), (220, 220, 210)),
             ((0, 0, 0), (0, 5, 0), (0, 0, 2.5), (210, 210, 220)), ((6, 0, 0), (0, 5, 0), (0, 0, 2.5), (210, 210, 220))]
    for _ in range(8):   # five visible faces of a box resting on the floor
        lo = np.r_[rng.uniform(0.3, 5.0), rng.uniform(0.3, 4.0), 0.0]
        size = rng.uniform(0.3, 1.0, 3)
        color = tuple(int(c) for c in rng.integers(30, 230, 3))
        sx, sy, sz = np.diag(size)
        rects += [(lo + sz, sx, sy, color), (lo, sx, sz, color), (lo + sy, sx, sz, color),
                  (lo, sy, sz, color), (lo + sx, sy, sz, color)]
    origin, u, v, colors = (np.array([r[k] for r in rects], np.float64) for k in range(4))
    area = np.linalg.norm(np.cross(u, v), axis=1)
    which = rng.choice(len(rects), size=n, p=area / area.sum())
    st = rng.random((n, 2))
    xyz = origin[which] + st[:, :1] * u[which] + st[:, 1:] * v[which] + rng.normal(0, 0.002, (n, 3))
    return xyz.astype(np.float32), colors[which].astype(np.uint8)


def postprocess_share(t: dict[str, float]) -> float:
    """The post-processing's part of the whole proposal stage (network + post-processing) of one row."""
    return t["postprocess"] / (t["proposals"] + t["postprocess"])


def time_cloud(segmenter: Segmenter, msg, settings: params.NodeSettings, helper: Executor) -> dict[str, float]:
    """Milliseconds per stage for one cloud, through the node's own functions."""
    timings = {}
    t0 = time.perf_counter()
    conv = cloud_from_msg(msg)
    t1 = time.perf_counter()
    cloud, inverse, _ = fit_point_budget(conv.cloud, settings.max_points, settings.voxel_size)
    t2 = time.perf_counter()
    timings.update(convert=(t1 - t0) * 1e3, downsample=(t2 - t1) * 1e3)
    instances = segmenter.segment(cloud, settings.vocabulary)
    timings.update({k: v for k, v in instances.timings.items() if k != "total"})
    t0 = time.perf_counter()
    outputs = build_outputs(msg.header, conv, msg.width * msg.height, instances, inverse, settings, helper)
    t1 = time.perf_counter()
    for out in (outputs.instances, outputs.markers, outputs.labeled_cloud):
        serialize_message(out)
    timings.update(messages=(t1 - t0) * 1e3, serialize=(time.perf_counter() - t1) * 1e3)
    timings["instances"] = len(instances)
    timings["segmented"] = len(cloud)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000], help="cloud sizes (points)")
    parser.add_argument("--repeats", type=int, default=3, help="timed clouds per size (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", choices=params.DEVICES, help="auto, cpu or cuda")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--bundle", type=Path, default=None, help="model bundle (default: an untrained one of --size)")
    model.add_argument("--size", choices=sorted(SIZES), default="small",
                       help="shapes of the untrained bundle made for the run (default: small, the test double)")
    parser.add_argument("--vocabulary", choices=("bench", "bundle"), default="bench",
                        help=f"bench: the {len(BENCH_VOCABULARY)} names {BENCH_VOCABULARY[:3]}...; "
                             "bundle: the bundle's own vocabulary (200 names for --size real)")
    parser.add_argument("--max-points", type=int, default=params.SPECS["max_points"].default,
                        help="the node's max_points (voxel-downsampling budget)")
    parser.add_argument("--scenes", type=int, default=3,
                        help="also time this many held-out synthetic rooms (whole-scene clouds like the ones the "
                             "bundle's Mask3D was trained on; 0: none)")
    parser.add_argument("--scene-seed", type=int, default=FOLK_TEST_RUN_SEED,
                        help="run seed of those rooms (default: the test split of models/folk-synth)")
    parser.add_argument("--out", type=Path, default=Path("out/bench/node_latency.json"), help="JSON result path")
    args = parser.parse_args(argv)

    # the node's threads: the model loads on a thread of its own, one worker segments (torch_threads)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(1) as helper, \
            ThreadPoolExecutor(1, initializer=torch_threads.use_threads, initargs=(args.threads,)) as worker:
        bundle = args.bundle or torch_threads.on_own_thread(make_untrained_bundle, Path(tmp) / "bundle",
                                                            size=args.size, threads=args.threads)
        defaults = {p.name: p.default for p in params.PARAMETERS}
        settings = replace(params.read_settings(defaults), max_points=args.max_points, score_threshold=0.0)
        t0 = time.perf_counter()
        segmenter = torch_threads.on_own_thread(Segmenter.from_bundle, bundle, device=args.device,
                                                threads=args.threads, **params.segmenter_overrides(settings))
        load_s = time.perf_counter() - t0
        vocabulary = BENCH_VOCABULARY if args.vocabulary == "bench" else tuple(read_manifest(bundle).vocabulary)
        settings = replace(settings, vocabulary=vocabulary)
        t0 = time.perf_counter()
        worker.submit(segmenter.text_embeddings, vocabulary).result()
        text_s = time.perf_counter() - t0
        clouds = [("box room", *room_cloud(n)) for n in args.sizes]
        for index in tqdm(range(args.scenes), desc="held-out rooms"):
            mesh, _, _ = generate_scene(scene_seed(args.scene_seed, index), scene_name(index), num_frames=1)
            clouds.append((mesh.scene_id, mesh.vertices, mesh.colors))
        rows = []
        for name, xyz, rgb in tqdm(clouds, desc="clouds"):
            msg = cloud_to_msg(xyz, rgb, Header(frame_id="map"))
            runs = [worker.submit(time_cloud, segmenter, msg, settings, helper).result()
                    for _ in tqdm(range(args.repeats + 1), desc=f"{len(xyz):,}", leave=False)][1:]
            rows.append((name, len(xyz), {k: float(np.median([r[k] for r in runs])) for k in runs[0]}))

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    described = str(args.bundle) if args.bundle else f"untrained {args.size}-size bundle"
    print(f"\nbundle {described}: load {load_s:.2f} s, first text encoding of {len(vocabulary)} names "
          f"{text_s:.2f} s, peak RSS {peak_rss_mb:,.0f} MB")
    print(f"folk_segmenter latency per cloud, median of {args.repeats} (ms); device {segmenter.device}, "
          f"{args.threads} torch threads, max_points {args.max_points:,}")
    header = (f"{'cloud':<13} {'points':>9} {'segm.':>8} {'inst':>5} " + " ".join(f"{s:>11}" for s in STAGES)
              + f" {'total':>9} {'post share':>10}")
    print(header)
    print("-" * len(header))
    for name, n, t in rows:
        total = sum(t[s] for s in STAGES)
        print(f"{name:<13} {n:>9,} {int(t['segmented']):>8,} {int(t['instances']):>5} "
              + " ".join(f"{t[s]:>11.1f}" for s in STAGES) + f" {total:>9.1f} {postprocess_share(t):>10.0%}")
    print("post share: postprocess / (proposals + postprocess), the post-processing's part of the proposal stage. "
          "The box rooms are denser scans of one small room than the training scenes: their masks are larger "
          "and their post-processing costs more")
    write_json_atomic(args.out, {"device": str(segmenter.device), "threads": args.threads, "repeats": args.repeats,
                                 "bundle": described, "vocabulary_names": len(vocabulary), "load_s": load_s,
                                 "text_first_s": text_s, "peak_rss_mb": peak_rss_mb,
                                 "rows": [{"cloud": name, "points": n, **t, "total": sum(t[s] for s in STAGES),
                                           "postprocess_share": postprocess_share(t)} for name, n, t in rows]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
