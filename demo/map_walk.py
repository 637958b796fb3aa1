"""The demo's second part: the same walk-through played into the node in map mode (the live object map).

A second node (``-p mode:=map``, its own namespace) gets the bag's fused clouds one at a time. Per cloud
the demo prints the map with stable ids (new ones marked), the update latency by stage next to the size
of the map and of what was segmented, asks the node one question through its ``~/query`` service, and
renders the labeled cloud coloured by stable id. At the end it saves the map through ``~/save_map``
(inside ``map_dir``, here ``out/demo/maps``) and stops the node, which also saves its ``map_file``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NODE_NAME = "folk_segmenter"
TOPIC_IN, TOPIC_INSTANCES, TOPIC_LABELED = "cloud_in", "instances", "labeled_cloud"


def id_colors(ids: np.ndarray) -> np.ndarray:
    """(M, 3) float RGB in [0, 1]: a fixed colour per stable id (golden-ratio hues), so an object keeps
    its colour from render to render."""
    import matplotlib.colors as mcolors
    hue = (np.asarray(ids, np.float64) * 0.618033988749895) % 1.0
    return mcolors.hsv_to_rgb(np.stack([hue, np.full_like(hue, 0.75), np.full_like(hue, 0.9)], axis=1))


def call_service(node, srv_type, name: str, request, timeout: float):
    """Call a service of the node and wait for the answer; TimeoutError when it does not come."""
    client = node.create_client(srv_type, name)
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} did not appear within {timeout:.0f} s")
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from {name} within {timeout:.0f} s")
            time.sleep(0.01)
        return future.result()
    finally:
        node.destroy_client(client)


def print_map_table(rec: dict, position: int, total: int) -> None:
    print(f"\nmap cloud {position}/{total}: {rec['points']:,} points in the fused map, {rec['segmented_points']:,} "
          f"segmented | node: {rec['update']}")
    width = max([5] + [len(r["label"]) for r in rec["instances"]])
    print(f"  {'id':>4}  {'':3}  {'label':<{width}}  {'score':>6}  {'seen':>4}  {'points':>8}")
    for r in rec["instances"]:
        print(f"  {r['id']:>4}  {'new' if r['new'] else '':3}  {r['label']:<{width}}  {r['score']:>6.3f}  "
              f"{r['observations']:>4}  {r['points']:>8,}")
    stages = "  ".join(f"{k} {v:.0f}" for k, v in rec["node_ms"].items())
    print(f"  update latency ms: publish -> instances {rec['round_trip_ms']:.0f} | node: {stages}")
    q = rec["query"]
    answers = ", ".join(f"id {a['id']} ({a['label']}, {a['score']:.2f})" for a in q["answers"]) or "none"
    print(f"  query {q['phrases']} -> {answers}  [{q['ms']:.0f} ms]")
    print(f"  render: {rec['png']}")


def render_by_id(bag_msg, labeled: np.ndarray, inst_msg, title: str, out_png: Path) -> None:
    from demo.render import Scene, render
    from training.data import rosbag_io

    _, rgb = rosbag_io.pointcloud2_to_arrays(bag_msg.fields, bag_msg.point_step, bag_msg.data,
                                             bool(bag_msg.is_bigendian), width=bag_msg.width,
                                             height=bag_msg.height, row_step=bag_msg.row_step, remove_nans=False)
    xyz = np.stack([labeled["x"], labeled["y"], labeled["z"]], axis=1)
    ids = np.array([i.id for i in inst_msg.instances], np.int64)
    colors = 0.5 + 0.5 * rgb.astype(np.float32) / 255.0
    point_id = labeled["instance_id"]
    mine = point_id >= 0
    colors[mine] = id_colors(point_id[mine])
    boxes = np.array([[(i.bbox_min.x, i.bbox_min.y, i.bbox_min.z), (i.bbox_max.x, i.bbox_max.y, i.bbox_max.z)]
                      for i in inst_msg.instances], np.float32).reshape(-1, 2, 3)
    texts = [f"#{i.id} {i.label}" for i in inst_msg.instances]
    render(Scene(xyz=xyz, colors=colors, boxes=boxes, texts=texts, box_colors=id_colors(ids), legend={}),
           out_png, title)


def play_map_mode(args, bundle: Path, clouds) -> int:
    """Play ``clouds`` into a map-mode node; returns the exit code (0 when all of it worked)."""
    from folk_ros_interfaces.msg import InstanceArray
    from folk_ros_interfaces.srv import QueryMap, SaveMap
    from sensor_msgs.msg import PointCloud2

    from demo.node_process import NodeProcess, node_arguments, point_fields, wait_for_report
    from demo.player import CloudPlayer, RosSession, StampCollector

    namespace = args.namespace.rstrip("/") + "_map"
    map_dir = (args.out / "maps").resolve()
    ros_args = [*node_arguments(argparse.Namespace(**{**vars(args), "namespace": namespace}), bundle),
                "-p", "mode:=map", "-p", f"map_dir:={map_dir}", "-p", "map_file:=demo.map"]
    (map_dir / "demo.map").unlink(missing_ok=True)   # the demo starts from an empty map
    node = NodeProcess(ros_args, args.out / "node_map.log")
    print(f"\n=== map mode: {NODE_NAME} in namespace {namespace} (mode:=map, map_dir {map_dir}), "
          f"log {node.log_path}")
    records, seen = [], set()
    phrase = f"a {args.query}"
    try:
        with RosSession("folk_demo_map_player", namespace) as ros:
            collector = StampCollector(ros.node, {TOPIC_INSTANCES: InstanceArray, TOPIC_LABELED: PointCloud2})
            player = CloudPlayer(ros.node, TOPIC_IN, collector, (TOPIC_INSTANCES, TOPIC_LABELED), timeout=args.timeout)
            player.wait_until_connected(args.timeout, give_up=node.trouble)
            service = f"{namespace}/{NODE_NAME}"
            for position, played in enumerate(player.play(clouds, give_up=node.trouble), start=1):
                inst_msg = played.outputs[TOPIC_INSTANCES].msg
                labeled = point_fields(played.outputs[TOPIC_LABELED].msg)
                report = wait_for_report(node, position)
                t0 = time.perf_counter()
                answer = call_service(ros.node, QueryMap, f"{service}/query",
                                      QueryMap.Request(phrases=[phrase], max_results=3, min_score=0.0), args.timeout)
                query_ms = (time.perf_counter() - t0) * 1e3
                if not answer.success:
                    raise RuntimeError(f"query refused: {answer.message}")
                rows = [{"id": int(i.id), "new": int(i.id) not in seen, "label": i.label, "score": float(i.score),
                         "observations": int(i.observations), "points": len(i.point_indices)}
                        for i in inst_msg.instances]
                seen |= {r["id"] for r in rows}
                png = args.out / f"map_cloud_{position:02d}.png"
                render_by_id(played.cloud.msg, labeled, inst_msg,
                             f"map mode, cloud {position}/{len(clouds)}: {len(rows)} objects, coloured by stable id",
                             png)
                rec = {"position": position, "points": played.cloud.num_points,
                       "segmented_points": report.segmented if report else -1,
                       "update": report.found if report else "no log line", "map_instances": len(rows),
                       "round_trip_ms": played.round_trip_ms(TOPIC_INSTANCES),
                       "node_ms": report.stages_ms if report else {}, "instances": rows, "png": str(png),
                       "query": {"phrases": [phrase], "ms": query_ms,
                                 "answers": [{"id": int(i.id), "label": i.label, "score": float(s)}
                                             for i, s in zip(answer.instances, answer.scores)]}}
                records.append(rec)
                print_map_table(rec, position, len(clouds))
            saved = call_service(ros.node, SaveMap, f"{service}/save_map", SaveMap.Request(file_name="walk.map"),
                                 args.timeout)
            print(f"\n~/save_map: {saved.message}")
            if not saved.success:
                raise RuntimeError(saved.message)
    except (TimeoutError, RuntimeError) as err:
        try:
            node.proc.wait(3.0)
        except subprocess.TimeoutExpired:
            pass
        node.stop()
        tail = "\n".join(node.log().splitlines()[-15:])
        print(f"demo (map mode): {err}\n--- last lines of {node.log_path} ---\n{tail}", file=sys.stderr)
        return 1
    except BaseException:
        node.stop()
        raise
    sent = node.stop()
    stable = _stable_ids(records)
    (args.out / "map_instances.json").write_text(json.dumps({"clouds": records, "stable_ids": stable}, indent=1))
    saved = (map_dir / "demo.map").exists()
    print(f"map mode: {len(seen)} ids over {len(records)} clouds; {stable['kept']} of the first cloud's "
          f"{stable['first']} ids still in the last map; map file saved on shutdown: {saved} "
          f"({map_dir / 'demo.map'})")
    print(f"map-mode node stopped ({node.how_stopped(sent)}), exit code {node.proc.returncode}")
    if not saved:
        tail = "\n".join(node.log().splitlines()[-15:])
        print(f"--- last lines of {node.log_path} ---\n{tail}")
    print(f"map instances: {args.out / 'map_instances.json'}")
    return 0


def _stable_ids(records: list[dict]) -> dict:
    first = {r["id"] for r in records[0]["instances"]} if records else set()
    last = {r["id"] for r in records[-1]["instances"]} if records else set()
    return {"first": len(first), "kept": len(first & last), "last": len(last)}
