"""`make demo`: a synthetic scene's bag played into the folk_segmenter node over ROS 2, end to end.

Run from the repository root::

    python -m demo [--bundle models/folk-synth] [--scenes 1] [--frames 200] [--clouds 4] [--seed 0]
                   [--vocabulary "chair,table,..."] [--new-vocabulary "pillow,book,..."] [--out out/demo]

1. Generate (or reuse) synthetic ScanNet-style scenes with their ROS 2 bags under ``--data``, read
   them back through the ScanNet-layout and bag readers, print a summary, write ``preview.png``.
2. Start the node (``python -m folk_ros.ros.node --ros-args --params-file config/segment.yaml
   -p model_bundle:=...``) as a subprocess in its own namespace, and play the first scene's fused
   clouds into its ``cloud_in`` with their recorded stamps (:mod:`demo.player`), one at a time:
   each cloud waits for the node's ``instances`` and ``labeled_cloud`` with its stamp.
3. Per cloud: a table (instance, label, score, points), the publish -> instances round trip and the
   node's per-stage milliseconds (from its per-cloud log line), and a PNG render (top and perspective
   view with boxes and labels, :mod:`demo.render`) of the labeled cloud.
4. Halfway, set the node's ``vocabulary`` parameter through its parameter service; the next cloud
   is labeled from the new names.
5. ``instances.json`` with every instance of every cloud; the node is stopped with SIGINT (then
   SIGTERM, SIGKILL if it hangs).
6. The same walk-through again, every cloud of the bag, into a second node in map mode
   (:mod:`demo.map_walk`): stable ids, update latency next to the map size, one ``~/query`` per cloud,
   renders coloured by stable id, ``~/save_map``; ``--no-map`` skips it.

Exit code 0 when all of it worked, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from demo.node_process import NodeProcess, node_arguments, point_fields, wait_for_report
from demo.preview import write_preview
from training.data import bag_reader, rosbag_io, scannet, synthetic
from training.data.types import BAG_TOPICS

NODE_NAME = "folk_segmenter"
TOPIC_IN, TOPIC_INSTANCES, TOPIC_LABELED = "cloud_in", "instances", "labeled_cloud"
NEW_VOCABULARY = ("pillow", "book", "cup", "bottle", "bowl", "laptop", "backpack", "box")


def _names(text: str) -> list[str]:
    """'chair, table,trash can' -> ['chair', 'table', 'trash can'] (argparse type)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _param(text: str) -> str:
    if ":=" not in text or not text.split(":=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected NAME:=VALUE, got {text!r}")
    return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="models/folk-synth", help="model bundle folder given to the node")
    p.add_argument("--scenes", type=int, default=1, help="number of synthetic scenes (the first one is played)")
    p.add_argument("--frames", type=int, default=200, help="RGB-D frames per scene (a fused cloud every 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene set")
    p.add_argument("--data", type=Path, default=Path("data/demo"), help="where scenes are written (reused)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where summary, renders, JSON and logs go")
    p.add_argument("--clouds", type=int, default=4, help="play this many of the bag's clouds, spread evenly (0: all)")
    p.add_argument("--vocabulary", type=_names, default=None,
                   help="comma-separated names at start (default: config/segment.yaml's)")
    p.add_argument("--new-vocabulary", type=_names, default=",".join(NEW_VOCABULARY),
                   help="comma-separated names set halfway through (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="the node's torch device")
    p.add_argument("--threads", type=int, default=0, help="the node's torch CPU threads (0: torch's default)")
    p.add_argument("-p", "--param", type=_param, action="append", default=[], metavar="NAME:=VALUE",
                   help="any other node parameter (repeatable), e.g. -p score_threshold:=0.1")
    p.add_argument("--namespace", default="/folk_demo", help="ROS namespace of the demo's node and player")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for the node start and per cloud")
    p.add_argument("--query", default="chair", help="map mode: the object asked for through ~/query ('a NAME')")
    p.add_argument("--no-map", action="store_true", help="skip the second part (the walk-through in map mode)")
    args = p.parse_args(argv)
    if args.scenes < 1 or args.frames < 1 or args.clouds < 0 or args.threads < 0:
        p.error("--scenes and --frames must be >= 1, --clouds and --threads >= 0")
    return args


# ---------------------------------------------------------------------------------------------
# 1. the scene set


def summarise_scene(scene_dir: Path, bag: Path) -> dict:
    """Read one generated scene back through the ScanNet-layout reader and its bag through the bag reader."""
    mesh = scannet.read_scene_mesh(scene_dir)
    frames = scannet.frame_ids(scene_dir)
    classes = Counter(mesh.instance_labels[i] for i in np.unique(mesh.instance_ids) if i > 0)
    clouds = []
    if bag.exists():
        clouds = [len(xyz) for _, xyz, _ in bag_reader.read_bag_clouds(bag, BAG_TOPICS["cloud"])]
    return {
        "scene": mesh.scene_id,
        "vertices": mesh.num_vertices,
        "frames": len(frames),
        "instances": int(sum(classes.values())),
        "classes": dict(sorted(classes.items())),
        "bag": str(bag) if bag.exists() else None,
        "bag_cloud_points": clouds,
    }


def print_summary(rows: list[dict]) -> None:
    print(f"\n{'scene':<16}{'vertices':>10}{'frames':>8}{'instances':>11}  bag clouds (points)")
    for r in rows:
        print(f"{r['scene']:<16}{r['vertices']:>10}{r['frames']:>8}{r['instances']:>11}  "
              f"{len(r['bag_cloud_points'])} ({', '.join(map(str, r['bag_cloud_points'][-3:]))} ...)")
    total = Counter()
    for r in rows:
        total.update(r["classes"])
    print(f"\ninstances per class over {len(rows)} scenes ({len(total)} classes):")
    width = max(map(len, total)) if total else 0
    for name, n in sorted(total.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {name:<{width}}  {n}")


def prepare_scenes(args: argparse.Namespace) -> Path | None:
    """Generate or reuse the scenes, print the summary, write summary.json and preview.png.

    Returns the first scene's bag, or None (message printed) when no complete scene with a bag exists.
    """
    t0 = time.perf_counter()
    synthetic.main(["--scenes", str(args.scenes), "--seed", str(args.seed),
                    "--frames", str(args.frames), "--out", str(args.data)])
    t_gen = time.perf_counter() - t0
    scene_dirs = sorted(d for d in args.data.iterdir() if d.is_dir() and scannet.is_complete(d))
    if not scene_dirs:
        print(f"demo: no complete scene in {args.data}", file=sys.stderr)
        return None
    rows = [summarise_scene(d, args.data / synthetic.BAG_DIR / d.name) for d in scene_dirs[:args.scenes]]
    print_summary(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2))
    preview = write_preview(scene_dirs[0], args.out / "preview.png")
    print(f"\ngenerated/reused {len(rows)} scenes in {t_gen:.1f} s under {args.data}")
    print(f"summary: {args.out / 'summary.json'}\npreview: {preview}")
    if rows[0]["bag"] is None:
        print(f"demo: scene {rows[0]['scene']} has no bag (generated with --no-bag?); remove {scene_dirs[0]} "
              f"to regenerate it", file=sys.stderr)
        return None
    return Path(rows[0]["bag"])


# ---------------------------------------------------------------------------------------------
# 3. outputs -> table, JSON, render


def instance_rows(inst_msg, labeled: np.ndarray) -> list[dict]:
    """The JSON rows of one InstanceArray; ``labeled_points`` counts the labeled-cloud points it won."""
    won = np.bincount(labeled["instance_id"][labeled["instance_id"] >= 0], minlength=len(inst_msg.instances))
    rows = []
    for it in inst_msg.instances:
        rows.append({
            "id": int(it.id), "label": it.label, "label_index": int(it.label_index),
            "score": round(float(it.score), 4), "text": f"{it.label} {it.score:.2f}",
            "points": len(it.point_indices), "labeled_points": int(won[it.id]) if it.id < len(won) else 0,
            "centroid": [round(v, 4) for v in (it.centroid.x, it.centroid.y, it.centroid.z)],
            "bbox_min": [round(v, 4) for v in (it.bbox_min.x, it.bbox_min.y, it.bbox_min.z)],
            "bbox_max": [round(v, 4) for v in (it.bbox_max.x, it.bbox_max.y, it.bbox_max.z)],
        })
    return rows


def print_table(rec: dict, position: int, total: int) -> None:
    sec, nsec = rec["stamp"]
    print(f"\ncloud {position}/{total}: bag message {rec['bag_index']}, stamp {sec}.{nsec:09d}, "
          f"{rec['points']:,} points, frame '{rec['frame_id']}'")
    print(f"  vocabulary ({len(rec['vocabulary'])}): {', '.join(rec['vocabulary'])}")
    width = max([5] + [len(r["label"]) for r in rec["instances"]])
    print(f"  {'id':>4}  {'label':<{width}}  {'score':>6}  {'points':>8}")
    for r in rec["instances"]:
        print(f"  {r['id']:>4}  {r['label']:<{width}}  {r['score']:>6.3f}  {r['points']:>8,}")
    if not rec["instances"]:
        print("  (no instance above score_threshold)")
    stages = rec["node_ms"]
    node = ("  ".join(f"{k} {v:.1f}" for k, v in stages.items()) + f"  (total {rec['node_total_ms']:.1f})"
            if stages else "(no per-cloud log line found)")
    print(f"  latency ms: publish -> instances {rec['round_trip_ms']:.1f} | node: {node}")
    print(f"  render: {rec['png']}")


def render_cloud(bag_msg, labeled: np.ndarray, inst_rows: list[dict], title: str, out_png: Path) -> list[str]:
    """Render the labeled cloud: label colours on instance points, the bag's own colours (faded) elsewhere.

    Returns the texts drawn at the boxes (one per instance, in instance order).
    """
    from demo.render import Scene, render
    from folk_ros.ros.conversions import label_colors

    _, rgb = rosbag_io.pointcloud2_to_arrays(bag_msg.fields, bag_msg.point_step, bag_msg.data,
                                             bool(bag_msg.is_bigendian), width=bag_msg.width,
                                             height=bag_msg.height, row_step=bag_msg.row_step, remove_nans=False)
    xyz = np.stack([labeled["x"], labeled["y"], labeled["z"]], axis=1)
    mine = labeled["instance_id"] >= 0
    colors = 0.5 + 0.5 * rgb.astype(np.float32) / 255.0           # faded scene colours
    colors[mine] = rosbag_io.unpack_rgb(labeled["rgb"][mine]) / 255.0   # the node's label colours
    label_idx = np.array([r["label_index"] for r in inst_rows], np.int64)
    box_colors = label_colors(label_idx).astype(np.float32) / 255.0
    boxes = np.array([[r["bbox_min"], r["bbox_max"]] for r in inst_rows], np.float32).reshape(-1, 2, 3)
    texts = [r["text"] for r in inst_rows]
    legend = {r["label"]: tuple(c) for r, c in zip(inst_rows, box_colors.tolist())}
    render(Scene(xyz=xyz, colors=colors, boxes=boxes, texts=texts, box_colors=box_colors, legend=legend),
           out_png, title)
    return texts


# ---------------------------------------------------------------------------------------------
# 4. the live part


def isolate_ros(out: Path) -> None:
    """Keep the demo's ROS 2 traffic on this machine and its ROS logs under ``out`` (unless already set)."""
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOG_DIR", str((out / "ros_log").resolve()))


def change_vocabulary(client, names: list[str], timeout: float) -> str | None:
    """Set ``vocabulary`` through the node's parameter service; the rejection reason, or None."""
    from rclpy.parameter import Parameter
    future = client.set_parameters([Parameter("vocabulary", value=list(names))])
    deadline = time.monotonic() + timeout
    while not future.done():
        if time.monotonic() > deadline:
            return f"no answer from the parameter service within {timeout:.0f} s"
        time.sleep(0.02)
    (result,) = future.result().results
    return None if result.successful else result.reason


def play_into_node(args: argparse.Namespace, bundle: Path, bag: Path) -> int:
    """Steps 2-5 of the module docstring; returns the exit code."""
    isolate_ros(args.out)
    from folk_ros_interfaces.msg import InstanceArray
    from rclpy.parameter_client import AsyncParameterClient
    from sensor_msgs.msg import PointCloud2

    from demo.player import CloudPlayer, RosSession, StampCollector, read_clouds

    clouds = read_clouds(bag, BAG_TOPICS["cloud"], args.clouds)
    if len(clouds) == 1:   # one cloud (a walk of <= 50 frames): play it before and after the change
        print(f"\nnote: {bag} holds one cloud; it is played twice, before and after the vocabulary change")
        clouds = clouds * 2
    change_at = (len(clouds) + 1) // 2   # the vocabulary changes after the cloud at this position (1-based)
    node = NodeProcess(node_arguments(args, bundle), args.out / "node.log")
    print(f"\nnode: {NODE_NAME} in namespace {args.namespace}, bundle {bundle}, log {node.log_path}")
    records, change = [], None
    try:
        with RosSession("folk_demo_player", args.namespace) as ros:
            collector = StampCollector(ros.node, {TOPIC_INSTANCES: InstanceArray, TOPIC_LABELED: PointCloud2})
            player = CloudPlayer(ros.node, TOPIC_IN, collector, (TOPIC_INSTANCES, TOPIC_LABELED), timeout=args.timeout)
            target = f"{args.namespace.rstrip('/')}/{NODE_NAME}"
            params = AsyncParameterClient(ros.node, target)
            t0 = time.perf_counter()
            player.wait_until_connected(args.timeout, give_up=node.trouble)
            if not params.wait_for_services(timeout_sec=args.timeout):
                raise TimeoutError("the node's parameter services did not appear")
            print(f"node ready after {time.perf_counter() - t0:.1f} s; playing {len(clouds)} clouds from {bag}")
            for position, played in enumerate(player.play(clouds, give_up=node.trouble), start=1):
                rec = record_cloud(args, node, played, position, len(clouds), changed=position > change_at)
                records.append(rec)
                print_table(rec, position, len(clouds))
                if position == change_at:
                    old = rec["vocabulary"]
                    reason = change_vocabulary(params, args.new_vocabulary, args.timeout)
                    if reason is not None:
                        raise RuntimeError(f"vocabulary change rejected: {reason}")
                    change = {"service": f"{target}/set_parameters", "after_cloud": position,
                              "old": old, "new": list(args.new_vocabulary)}
                    print(f"\n>>> vocabulary set through {change['service']}: {', '.join(args.new_vocabulary)}"
                          f" (was {len(old)} names); the next cloud uses it")
    except (TimeoutError, RuntimeError) as err:
        try:
            node.proc.wait(3.0)   # a node that logged a start-up error is exiting by itself: let it
        except subprocess.TimeoutExpired:
            pass
        sent = node.stop()
        tail = "\n".join(node.log().splitlines()[-15:])
        print(f"demo: {err}\n--- last lines of {node.log_path} ---\n{tail}", file=sys.stderr)
        if sent:
            print(f"(node stopped with {', '.join(sent)})", file=sys.stderr)
        return 1
    except BaseException:
        node.stop()
        raise
    sent = node.stop()
    write_results(args, bundle, bag, records, change)
    print(f"node stopped ({node.how_stopped(sent)}), exit code {node.proc.returncode}")
    return 0


def record_cloud(args, node: NodeProcess, played, position: int, total: int, changed: bool) -> dict:
    """Everything about one played cloud: JSON record, render; reads the node's log line for it."""
    inst_msg = played.outputs[TOPIC_INSTANCES].msg
    labeled = point_fields(played.outputs[TOPIC_LABELED].msg)
    report = wait_for_report(node, position)
    rows = instance_rows(inst_msg, labeled)
    png = args.out / f"cloud_{position:02d}.png"
    sec, nsec = played.cloud.stamp
    vocab = list(inst_msg.vocabulary)
    title = (f"cloud {position}/{total} (stamp {sec}.{nsec:09d}, {played.cloud.num_points:,} points): "
             f"{len(rows)} instances | vocabulary{' (changed)' if changed else ''}: {', '.join(vocab)}")
    drawn = render_cloud(played.cloud.msg, labeled, rows, title, png)
    return {
        "position": position, "bag_index": played.cloud.index, "stamp": [sec, nsec],
        "frame_id": inst_msg.header.frame_id, "points": played.cloud.num_points, "vocabulary": vocab,
        "after_vocabulary_change": changed, "round_trip_ms": round(played.round_trip_ms(TOPIC_INSTANCES), 1),
        "node_ms": report.stages_ms if report else {}, "node_total_ms": report.total_ms if report else None,
        "segmented_points": report.segmented if report else None,
        "png": str(png), "drawn_labels": drawn, "instances": rows,
    }


def write_results(args, bundle: Path, bag: Path, records: list[dict], change: dict | None) -> Path:
    """instances.json, and the label counts before/after the vocabulary change on stdout."""
    doc = {"bundle": str(bundle), "bag": str(bag), "topic": BAG_TOPICS["cloud"], "vocabulary_change": change,
           "clouds": records}
    path = args.out / "instances.json"
    path.write_text(json.dumps(doc, indent=1, allow_nan=False))
    print("\nlabels per cloud:")
    for rec in records:
        counts = Counter(r["label"] for r in rec["instances"])
        mark = "new vocabulary" if rec["after_vocabulary_change"] else "initial vocabulary"
        listed = ", ".join(f"{name} x{n}" for name, n in counts.most_common()) or "none"
        print(f"  cloud {rec['position']} ({mark}): {listed}")
    print(f"instances: {path}\nrenders: {', '.join(rec['png'] for rec in records)}")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    from folk_ros.core.bundle import BundleError, read_manifest
    from folk_ros.ros.parameters import resolve_bundle
    try:
        bundle = resolve_bundle(args.bundle)
        read_manifest(bundle)   # present and intact (sha256), before minutes of generation
    except (FileNotFoundError, BundleError) as err:
        what = str(err).split("; set the model_bundle")[0]
        print(f"demo: {what}; pass --bundle DIR (manifest.json, mask3d.pt, clip/, student.pt)", file=sys.stderr)
        return 1
    bag = prepare_scenes(args)
    if bag is None:
        return 1
    code = play_into_node(args, bundle, bag)
    if code != 0 or args.no_map:
        return code
    from demo.map_walk import play_map_mode
    from demo.player import read_clouds
    return play_map_mode(args, bundle, read_clouds(bag, BAG_TOPICS["cloud"], 0))


if __name__ == "__main__":
    sys.exit(main())
