"""The live object map, measured: identity, accuracy, query precision, re-label and query cost, update cost.

Three parts (``--parts``, default all):

- ``quality``: ``--scenes`` held-out synthetic walk-throughs (seed ``--seed``, never trained on), whose
  fused map is published every ``--every`` frames. Per scene the clouds go through a
  :class:`LiveMap`; per GT object the share of the clouds where it is matched (IoU >= 0.5) in which it
  carries its most common id (target >= 0.9) and its id switches; the AP50 of the final map against
  the last cloud's GT next to the per-cloud mode's AP50 on that same cloud; for every GT class present
  the query "a {name}": precision@1 next to the student's top-1 accuracy on the GT instances.
- ``relabel``: a map of ``--instances`` instances: re-labelling for a new vocabulary (one matmul; the
  text encoding of the new names is timed apart), and one query (encode + rank), median of repeats.
- ``cost``: a multi-room apartment whose fused map grows room by room to >= 1 M points
  (``training.data.synthetic.generate_apartment``): per cloud the map points, new points, segmented
  points, the update ms (:meth:`LiveMap.update`) and what the node's map mode runs in all (convert,
  update, labels and messages, serialization; :func:`node_map_cycle`), and the per-cloud full pass ms
  (``--full-pass``: the whole cloud, downsampled to the same ``--max-points`` budget as the node does,
  with the voxel edge that took); the ratios last/first.

Prints one table per part and writes everything to ``--out`` (JSON).

    python -m bench.bench_live_map --bundle models/folk-synth --threads 2 [--parts quality relabel cost]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.live_map_eval import (MATCH_IOU, ap50, best_matches, evaluated_classes, identity_stats, masks_from_rows,
                                 point_sets, walkthrough)
from folk_ros.core.bundle import read_manifest
from folk_ros.core.cloud import PointCloud, fit_point_budget
from folk_ros.core.instance_map import InstanceMap
from folk_ros.core.map_config import MapConfig
from folk_ros.core.live_map import LiveMap
from folk_ros.core.segmenter import Segmenter, classify
from training.atomic import write_json_atomic
from training.data.vocabularies import label_ids_of


def quality_scene(live: LiveMap, sid: str, clouds, vocab: tuple[str, ...], vocab_ids: np.ndarray,
                  max_points: int) -> dict:
    seg = live.segmenter
    evaluated = evaluated_classes(vocab_ids)
    history: dict[int, list[int]] = defaultdict(list)
    rows_per_cloud = []
    for cloud in clouds:
        pc = PointCloud.from_arrays(cloud.xyz, cloud.rgb)
        t0 = time.perf_counter()
        upd = live.update(pc, cloud.stamp)
        update_ms = (time.perf_counter() - t0) * 1e3
        labels = live.label(vocab)
        shown = np.flatnonzero(labels.scores >= seg.cfg.score_threshold)
        point_rows = live.point_instances(pc.xyz)
        matches = best_matches(cloud.objects(evaluated), point_sets(point_rows, shown), len(pc))
        for g, (j, iou) in matches.items():
            if iou >= MATCH_IOU:
                history[g].append(int(live.map.ids[shown[j]]))
        rows_per_cloud.append({"points": len(pc), "segmented": upd.segmented_points, "kind": upd.kind,
                               "full": upd.full, "update_ms": update_ms, "map_instances": len(live.map),
                               "shown": int(shown.size)})
    last = clouds[-1]
    pc = PointCloud.from_arrays(last.xyz, last.rgb)
    # the final map against the last cloud's GT
    labels = live.label(vocab)
    shown = np.flatnonzero(labels.scores >= seg.cfg.score_threshold)
    point_rows = live.point_instances(pc.xyz)
    map_ap = ap50(sid, last, masks_from_rows(point_rows, shown), vocab_ids[labels.label_indices[shown]],
                  labels.scores[shown])
    # per-cloud mode on the same cloud
    sub, inverse, _ = fit_point_budget(pc, max_points, 0.02)
    inst = seg.segment(sub, vocab)
    masks = inst.masks if inverse is None else inst.masks[:, inverse]
    cloud_ap = ap50(sid, last, masks, vocab_ids[inst.label_indices], inst.scores)
    # queries: "a {name}" for every GT class present; top-1 correct when most of its points are that class
    objects = last.objects(evaluated)
    present = sorted({int(last.label[p[0]]) for p in objects.values()})
    name_of = dict(zip(vocab_ids.tolist(), vocab))
    correct = 0
    for cid in present:
        hits = live.query([f"a {name_of[cid]}"], k=1, vocabulary=vocab)
        if hits:
            pts = np.flatnonzero(point_rows == hits[0].row)
            lab = last.label[pts]
            correct += bool(pts.size and np.bincount(lab).argmax() == cid)
    # the student's top-1 accuracy on the GT instances of the last cloud
    feats = seg.mask3d.predict(sub.xyz, sub.rgb, point_features=seg.cfg.point_features,
                               post=seg.cfg.proposal_postprocess()).point_features
    gt_masks = np.zeros((len(objects), len(pc)), bool)
    for k, pts in enumerate(objects.values()):
        gt_masks[k, pts] = True
    if inverse is not None:   # GT over the segmented (downsampled) points: a voxel takes its first point's
        keep = np.zeros(len(sub), np.int64)
        keep[inverse] = np.arange(len(pc))
        gt_masks = gt_masks[:, keep]
    with torch.inference_mode():
        emb = seg.student(feats.to(seg.device), torch.from_numpy(gt_masks).to(seg.device))
        _, idx = classify(emb, seg.text_embeddings(vocab), seg.cfg.temperature)
    gt_labels = np.array([last.label[p[0]] for p in objects.values()])
    student_acc = float((vocab_ids[idx.cpu().numpy()] == gt_labels).mean()) if len(gt_labels) else float("nan")
    return {"scene": sid, "clouds": rows_per_cloud, "history": {str(k): v for k, v in history.items()},
            **identity_stats(history), "map_ap50": map_ap, "per_cloud_ap50": cloud_ap,
            "queries": len(present), "query_correct": correct,
            "student_gt_correct": int(round(student_acc * len(gt_labels))), "student_gt_total": int(len(gt_labels))}


def run_quality(args, seg: Segmenter, vocab, vocab_ids) -> dict:
    scenes = []
    for i in tqdm(range(args.scenes), desc="walk-throughs", unit="scene"):
        sid, clouds = walkthrough(args.first_scene + i, args.seed, args.frames, args.every)
        live = LiveMap(seg, MapConfig(), args.max_points, 0.02)
        scenes.append(quality_scene(live, sid, clouds, vocab, vocab_ids, args.max_points))
        s = scenes[-1]
        tqdm.write(f"{sid}: {len(clouds)} clouds, id consistency {s['id_consistency']:.3f}, switches/object "
                   f"{s['id_switches_per_object']:.2f}, AP50 map {s['map_ap50']:.3f} vs per-cloud "
                   f"{s['per_cloud_ap50']:.3f}, query {s['query_correct']}/{s['queries']}, student GT "
                   f"{s['student_gt_correct']}/{s['student_gt_total']}")
    history = {f"{s['scene']}/{k}": v for s in scenes for k, v in s["history"].items()}
    summary = {**identity_stats(history),
               "map_ap50": float(np.mean([s["map_ap50"] for s in scenes])),
               "per_cloud_ap50": float(np.mean([s["per_cloud_ap50"] for s in scenes])),
               "query_precision_at_1": sum(s["query_correct"] for s in scenes)
               / max(sum(s["queries"] for s in scenes), 1),
               "student_gt_top1": sum(s["student_gt_correct"] for s in scenes)
               / max(sum(s["student_gt_total"] for s in scenes), 1),
               "clouds_per_scene": float(np.mean([len(s["clouds"]) for s in scenes]))}
    print("\nquality over", len(scenes), "held-out walk-throughs")
    for k, v in summary.items():
        print(f"  {k:24s} {v:.3f}")
    return {"summary": summary, "scenes": scenes}


def run_relabel(args, seg: Segmenter, vocab) -> dict:
    """Re-label and query a map of ``--instances`` instances with random fused embeddings."""
    rng = np.random.default_rng(0)
    imap = InstanceMap(seg.clip.embed_dim)
    m = args.instances
    imap.ids = np.arange(m)
    imap.emb_sum = rng.normal(size=(m, imap.embedding_dim)).astype(np.float32)
    imap.score_sum, imap.points_sum = rng.uniform(0.1, 1.0, m), np.ones(m)
    new_vocab = [f"{name} {k}" for k, name in enumerate(vocab)]          # names never encoded before
    t0 = time.perf_counter()
    text = seg.clip.encode_text(new_vocab, seg.cfg.prompt_template).cpu().numpy()
    encode_ms = (time.perf_counter() - t0) * 1e3
    relabel = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        imap.label(text, seg.cfg.temperature)
        relabel.append((time.perf_counter() - t0) * 1e3)
    query = []
    for k in range(args.repeats):
        t0 = time.perf_counter()
        phrase = seg.clip.encode_text([f"a {vocab[k % len(vocab)]} number {k}"], "{}").cpu().numpy()
        imap.query(phrase, 10, reference=text)
        query.append((time.perf_counter() - t0) * 1e3)
    out = {"instances": m, "vocabulary": len(new_vocab), "relabel_ms": float(np.median(relabel)),
           "text_encoding_ms": encode_ms, "query_ms": float(np.median(query))}
    print(f"\nre-label {m} instances for {len(new_vocab)} new names: {out['relabel_ms']:.2f} ms (matmul; encoding "
          f"the names: {encode_ms:.1f} ms once); query (encode 1 phrase + rank): {out['query_ms']:.2f} ms")
    return out


def node_map_cycle(live: LiveMap, settings, vocab, msg, previous_ids: set[int]) -> tuple[dict, object, set[int]]:
    """What the node's map mode runs for one cloud, in process: convert, update, labels and messages,
    serialization (the CPU part of publishing). Returns (ms per stage, the update, the shown ids)."""
    from rclpy.serialization import serialize_message

    from folk_ros.ros.conversions import cloud_from_msg, stamp_seconds
    from folk_ros.ros.map_outputs import build_map_outputs, map_view, shown_rows

    ms = {}
    t0 = time.perf_counter()
    conv = cloud_from_msg(msg)
    t1 = time.perf_counter()
    upd = live.update(conv.cloud, stamp_seconds(msg.header.stamp))
    t2 = time.perf_counter()
    labels = live.label(vocab)
    view = map_view(live, labels, vocab, shown_rows(live, labels, live.segmenter.cfg.score_threshold), conv.cloud.xyz)
    outputs = build_map_outputs(msg.header, conv, len(conv.cloud), view, settings, previous_ids)
    t3 = time.perf_counter()
    for out in (outputs.instances, outputs.markers, outputs.labeled_cloud):
        serialize_message(out)
    t4 = time.perf_counter()
    ms.update(convert=(t1 - t0) * 1e3, update=(t2 - t1) * 1e3, messages=(t3 - t2) * 1e3, serialize=(t4 - t3) * 1e3)
    ms["node_total"] = sum(ms.values())
    return ms, upd, {int(i) for i in view.ids}


def run_cost(args, seg: Segmenter, vocab) -> dict:
    from std_msgs.msg import Header

    from folk_ros.ros import parameters as params
    from folk_ros.ros.conversions import cloud_to_msg, stamp_msg
    from training.data.synthetic import generate_apartment

    t0 = time.perf_counter()
    _, _, clouds = generate_apartment(args.seed, rooms=args.rooms, num_frames=args.apartment_frames)
    gen_s = time.perf_counter() - t0
    settings = params.read_settings({p.name: p.default for p in params.PARAMETERS})
    first, _, _ = fit_point_budget(PointCloud.from_arrays(*clouds[0][1:]), args.max_points, 0.02)
    seg.segment(first, vocab)   # warm-up: one-time costs (allocations, caches) stay out of the first update
    live = LiveMap(seg, MapConfig(), args.max_points, 0.02)
    rows, shown, prev = [], set(), 0
    for stamp, xyz, rgb in tqdm(clouds, desc="apartment clouds", unit="cloud"):
        msg = cloud_to_msg(xyz, rgb, Header(stamp=stamp_msg(stamp), frame_id="map"))
        ms, upd, shown = node_map_cycle(live, settings, vocab, msg, shown)
        full_ms, full_voxel = float("nan"), 0.0
        if args.full_pass:   # what per_cloud mode does with the same cloud (downsampled to the same budget)
            pc = PointCloud.from_arrays(xyz, rgb)
            t0 = time.perf_counter()
            sub, _, full_voxel = fit_point_budget(pc, args.max_points, 0.02)
            seg.segment(sub, vocab)
            full_ms = (time.perf_counter() - t0) * 1e3
        rows.append({"map_points": len(xyz), "new_points": len(xyz) - prev, "segmented_points": upd.segmented_points,
                     "kind": upd.kind, "full": upd.full, "update_ms": ms["update"], "node_ms": ms["node_total"],
                     "stages_ms": ms, "update_stages_ms": upd.timings, "full_pass_ms": full_ms,
                     "full_pass_voxel_m": full_voxel, "map_instances": len(live.map)})
        prev = len(xyz)
    print(f"\napartment: {args.rooms} rooms, {len(clouds)} clouds, generated in {gen_s:.0f} s")
    print(f"{'map points':>11} {'new pts':>9} {'segmented':>10} {'update ms':>10} {'(change)':>9} {'node ms':>8} "
          f"{'full pass ms':>13} {'(voxel m)':>9} {'instances':>9}")
    for r in rows:
        print(f"{r['map_points']:>11,} {r['new_points']:>9,} {r['segmented_points']:>10,} {r['update_ms']:>10.0f} "
              f"{r['update_stages_ms']['change']:>9.0f} {r['node_ms']:>8.0f} {r['full_pass_ms']:>13.0f} "
              f"{r['full_pass_voxel_m']:>9.3f} {r['map_instances']:>9}")
    first = rows[0]
    out = {"rooms": args.rooms, "clouds": rows, "last_over_first_update": rows[-1]["update_ms"] / first["update_ms"],
           "max_over_first_update": max(r["update_ms"] for r in rows) / first["update_ms"],
           "last_over_first_node": rows[-1]["node_ms"] / first["node_ms"]}
    if args.full_pass:
        out["full_pass_last_over_first"] = rows[-1]["full_pass_ms"] / first["full_pass_ms"]
    print("ratios:", {k: round(v, 2) for k, v in out.items() if k.endswith(("update", "first", "node"))})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_live_map", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default="models/folk-synth", help="model bundle")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--parts", nargs="+", choices=("quality", "relabel", "cost"), default=["quality", "relabel", "cost"],
                   help="what to measure: map quality, re-label/query times, update cost as the map grows")
    p.add_argument("--scenes", type=int, default=10, help="quality: held-out walk-throughs")
    p.add_argument("--seed", type=int, default=900, help="run seed of the held-out scenes / apartment")
    p.add_argument("--first-scene", type=int, default=0, help="quality: index of the first held-out walk-through")
    p.add_argument("--frames", type=int, default=200, help="quality: frames per walk-through")
    p.add_argument("--every", type=int, default=25, help="quality: a fused cloud every this many frames")
    p.add_argument("--max-points", type=int, default=200_000, help="Segmenter point budget (as the node)")
    p.add_argument("--instances", type=int, default=1000, help="relabel: map size")
    p.add_argument("--repeats", type=int, default=20, help="relabel: timed repeats (median)")
    p.add_argument("--rooms", type=int, default=8, help="cost: apartment rooms")
    p.add_argument("--apartment-frames", type=int, default=400,
                   help="cost: frames of the apartment walk (50 per room: one fused cloud per room)")
    p.add_argument("--full-pass", action="store_true", help="cost: also time the per-cloud full pass per cloud")
    p.add_argument("--out", type=Path, default=Path("out/bench/live_map.json"), help="JSON result path")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seg = Segmenter.from_bundle(args.bundle, device=args.device)
    vocab = tuple(read_manifest(args.bundle).vocabulary)
    vocab_ids = label_ids_of(vocab)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                          "device": args.device, "torch": torch.__version__}, "bundle": str(args.bundle)}
    if "quality" in args.parts:
        report["quality"] = run_quality(args, seg, vocab, vocab_ids)
    if "relabel" in args.parts:
        report["relabel"] = run_relabel(args, seg, vocab)
    if "cost" in args.parts:
        report["cost"] = run_cost(args, seg, vocab)
    write_json_atomic(args.out, report)
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
