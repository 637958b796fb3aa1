"""The folk_segmenter node as a process under a stream of clouds: executor responsiveness while a 1,000-name
vocabulary takes effect, and memory across many clouds.

1. Vocabulary: while a probe calls the node's ``get_parameters`` service back to back, it sets a vocabulary
   of ``--names`` names, then publishes a cloud. Reports the set call's round trip, the time until the first
   output labelled from the new vocabulary arrives ("takes effect"), and the worst and 99th-percentile
   round trip of the ``get_parameters`` calls made in between (the executor must answer within 100 ms).
   The node's text store starts empty, so CLIP encodes the names (the worst case).
2. Memory: publishes ``--clouds`` clouds one after another (each waited for) and reads the node process's
   resident set size (``VmRSS`` in /proc) after the 10th and the last, and its peak (``VmHWM``).

The clouds are the tests' box rooms (7,500 points, 4 seeds), so a cloud costs a fraction of a second.

    python -m bench.bench_node_soak [--names 1000] [--clouds 1000] [--bundle models/folk-synth] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from demo.node_process import NodeProcess
from test.ros_harness import NODE_ARGS, TOPIC_INSTANCES, Probe, ready_probe, room_msg
from training.atomic import write_json_atomic

RSS_AFTER = 10          # the reference point: memory after the first clouds (caches and allocator warmed up)


def proc_memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` (resident now) and ``VmHWM`` (peak resident) of process ``pid`` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024.0 for key in ("VmRSS", "VmHWM")}


def vocabulary_names(n: int) -> list[str]:
    """``n`` distinct object names (adjective x noun), like a large household vocabulary."""
    adjectives = ["red", "blue", "green", "small", "large", "wooden", "metal", "plastic", "old", "new", "white",
                  "black", "round", "square", "tall", "short", "soft", "glass", "leather", "striped"]
    nouns = ["chair", "table", "mug", "lamp", "shelf", "box", "bag", "bottle", "book", "plant", "sofa", "bed",
             "cabinet", "door", "window", "monitor", "keyboard", "pillow", "towel", "basket", "bowl", "vase",
             "clock", "fan", "heater", "printer", "speaker", "stool", "bench", "mirror", "rug", "trash can",
             "backpack", "suitcase", "guitar", "drawer", "sink", "toilet", "oven", "fridge", "kettle", "cup",
             "plate", "jar", "candle", "frame", "poster", "curtain", "blanket", "laptop"]
    names = [f"{a} {b}" for b in nouns for a in adjectives]
    if n > len(names):
        names += [f"object {k}" for k in range(n - len(names))]
    return names[:n]


def _vocabulary_change(probe: Probe, names: list[str], msg) -> dict:
    """Set the vocabulary while get_parameters runs back to back; time each call and the change's effect."""
    from rclpy.parameter import Parameter
    pings: list[tuple[float, float]] = []           # (start, round trip) in seconds
    stop = threading.Event()

    def ping() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            probe.call(lambda: probe.params.get_parameters(["score_threshold"]))
            pings.append((t, time.perf_counter() - t))

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    time.sleep(1.0)                                 # a baseline of pings before the change
    t_set = time.perf_counter()
    vocabulary = Parameter("vocabulary", Parameter.Type.STRING_ARRAY, names)
    result = probe.call(lambda: probe.params.set_parameters([vocabulary]))
    set_s = time.perf_counter() - t_set
    if not result.results[0].successful:
        stop.set()
        raise RuntimeError(f"the node refused the vocabulary: {result.results[0].reason}")
    stamp = probe.publish(msg)
    out = probe.result(stamp, topics=(TOPIC_INSTANCES,))[TOPIC_INSTANCES]
    effect_s = time.perf_counter() - t_set
    time.sleep(0.5)
    stop.set()
    pinger.join(timeout=30)
    during = np.array([rt for t, rt in pings if t_set <= t <= t_set + effect_s]) * 1e3
    before = np.array([rt for t, rt in pings if t < t_set]) * 1e3
    return {"names": len(names), "set_call_ms": set_s * 1e3, "takes_effect_s": effect_s,
            "output_vocabulary": len(out.vocabulary), "pings_during": int(during.size),
            "ping_max_ms_during": float(during.max()) if during.size else float("nan"),
            "ping_p99_ms_during": float(np.percentile(during, 99)) if during.size else float("nan"),
            "ping_median_ms_before": float(np.median(before)) if before.size else float("nan")}


def _memory(probe: Probe, pid: int, clouds: int) -> dict:
    """Publish ``clouds`` clouds (each waited for); RSS after RSS_AFTER and after the last, and the peak."""
    msgs = [room_msg(seed=s)[0] for s in range(4)]
    rss = []
    for k in tqdm(range(clouds), desc="clouds"):
        probe.result(probe.publish(msgs[k % len(msgs)]), topics=(TOPIC_INSTANCES,))
        probe.outputs.clear()                        # the probe keeps nothing: only the node's memory grows
        probe.received.clear()
        if k + 1 in (1, RSS_AFTER) or (k + 1) % 100 == 0 or k + 1 == clouds:
            rss.append({"clouds": k + 1, **proc_memory_mb(pid)})
    ref = next(r for r in rss if r["clouds"] == min(RSS_AFTER, clouds))
    last = rss[-1]
    return {"clouds": clouds, "samples": rss, "rss_mb_after_ref": ref["VmRSS"], "rss_mb_last": last["VmRSS"],
            "peak_mb": last["VmHWM"], "last_over_ref": last["VmRSS"] / ref["VmRSS"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_node_soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--names", type=int, default=1000, help="vocabulary size to switch to")
    p.add_argument("--clouds", type=int, default=1000, help="clouds for the memory measurement (0: skip it)")
    p.add_argument("--bundle", default="models/folk-synth", help="model bundle")
    p.add_argument("--threads", type=int, default=2, help="the node's num_threads")
    p.add_argument("--out", type=Path, default=Path("out/bench/node_soak.json"), help="JSON result path")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        # an empty text store of its own: the new vocabulary is encoded by CLIP, whatever ran before
        node = NodeProcess([*NODE_ARGS, "-p", f"model_bundle:={args.bundle}", "-p", f"num_threads:={args.threads}",
                            "-p", "max_vocabulary:=20000", "-p", f"text_cache_dir:={Path(tmp) / 'text'}"],
                           Path(tmp) / "node.log")
        try:
            with ready_probe(node) as probe:
                msg = room_msg(seed=0)[0]
                probe.result(probe.publish(msg), topics=(TOPIC_INSTANCES,))         # warm up
                vocab = _vocabulary_change(probe, vocabulary_names(args.names), msg)
                memory = _memory(probe, node.proc.pid, args.clouds) if args.clouds else None
        finally:
            node.stop()
    print(f"\nvocabulary of {vocab['names']:,} names: set call {vocab['set_call_ms']:.1f} ms, takes effect in "
          f"{vocab['takes_effect_s']:.2f} s (output vocabulary {vocab['output_vocabulary']:,} names); "
          f"get_parameters meanwhile: {vocab['pings_during']} calls, worst {vocab['ping_max_ms_during']:.1f} ms, "
          f"p99 {vocab['ping_p99_ms_during']:.1f} ms (median before {vocab['ping_median_ms_before']:.1f} ms)")
    if memory is not None:
        print(f"memory: RSS {memory['rss_mb_after_ref']:.0f} MB after {RSS_AFTER} clouds, "
              f"{memory['rss_mb_last']:.0f} MB after {memory['clouds']:,} (x{memory['last_over_ref']:.3f}), "
              f"peak {memory['peak_mb']:.0f} MB")
    write_json_atomic(args.out, {"threads": args.threads, "bundle": args.bundle, "vocabulary": vocab,
                                 "memory": memory})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
