"""The real model sizes on this machine: what a CPU-only robot pays with the official shapes.

Builds an UNTRAINED real-size bundle in a temporary folder (``training.untrained_bundle --size real``: the
official ScanNet200 Mask3D, Res16UNet34C with 39.66 M parameters; open_clip's ViT-L-14-336, 768-d; a
96 -> 512 -> 768 student; ScanNet200's 200 names; random weights, so every cost is that of real weights),
then runs, each as its own process (peak RSS per process):

* ``bench.bench_node_latency`` on it: bundle load time, the first text encoding of the 200 names, peak RSS,
  and the node's latency per cloud by stage at 50k / 100k / 200k points;
* ``bench.bench_teacher --methods teacher`` with its ViT-L: the teacher's time per scene, per view embedded
  and per frame (dense MaskCLIP features at the paper's 336 x 448 input).

Prints one table and writes ``<out>/real_size.json`` (the two benchmarks' own JSON beside it). Nothing is
downloaded and nothing is kept: the bundle (~1.9 GB) is deleted at the end.

    python -m bench.bench_real_size [--threads 2] [--sizes 50000 100000 200000] [--frames 40 --every 10]
                                    [--device cpu] [--out out/bench]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from bench.run_all import Bench, run
from training.atomic import write_json_atomic
from training.make_bundle import folder_mb
from training.untrained_bundle import make_untrained_bundle


def _node(d: dict) -> dict:
    out = {"bundle load s": round(d["load_s"], 2),
           f"first text encoding of {d['vocabulary_names']} names s": round(d["text_first_s"], 2),
           "peak RSS MB (node process)": round(d["peak_rss_mb"])}
    for r in d["rows"]:
        k = f"{r['points'] // 1000}k"
        out[f"node total s at {k}"] = round(r["total"] / 1e3, 2)
        out[f"  proposals (Mask3D) s at {k}"] = round(r["proposals"] / 1e3, 2)
        out[f"  student + classify ms at {k}"] = round(r["student"] + r["classify"], 1)
    return out


def _teacher(d: dict) -> dict:
    t = d["summary"]["teacher"]
    return {"teacher s per scene": round(t["total"], 2), "teacher s per view embedded": round(t["seconds_per_view"], 3),
            "teacher s per frame encoded": round(t["seconds_per_frame_encoded"], 2),
            "teacher CLIP stage s per scene": round(t["stages"].get("clip", float("nan")), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_real_size", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of each benchmark")
    p.add_argument("--sizes", nargs="+", default=["50000", "100000", "200000"], help="cloud sizes (points)")
    p.add_argument("--repeats", default="1", help="timed clouds per size, after one warm-up")
    p.add_argument("--frames", default="40", help="frames of the teacher's scene walk")
    p.add_argument("--every", default="10", help="frame stride of the teacher")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, default=Path("out/bench"),
                   help="folder of real_size.json and the two benchmarks' JSON and logs")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    benches = (
        Bench("real_size_node_latency", "bench.bench_node_latency",
              ("--bundle", "{bundle}", "--vocabulary", "bundle", "--sizes", *args.sizes, "--repeats", args.repeats,
               "--threads", "{threads}", "--device", args.device, "--out", "{out}/real_size_node_latency.json"),
              _node),
        Bench("real_size_teacher", "bench.bench_teacher",
              ("--clip", "local-dir:{bundle}/clip", "--methods", "teacher", "--scenes", "1", "--frames", args.frames,
               "--every", args.every, "--threads", "{threads}", "--device", args.device,
               "--out", "{out}/real_size_teacher.json"), _teacher),
    )
    with tempfile.TemporaryDirectory(prefix="folk-real-size-") as tmp:
        t0 = time.perf_counter()
        bundle = make_untrained_bundle(Path(tmp) / "bundle", size="real")
        build_s = time.perf_counter() - t0
        size_mb = folder_mb(bundle)
        print(f"[bench] real-size bundle ({size_mb:,.0f} MB) built in {build_s:.0f} s", flush=True)
        rows = []
        for bench in benches:
            print(f"[bench] {bench.name} ...", flush=True)
            rows.append(run(bench, out, args.threads, str(bundle)))
            print(f"[bench] {bench.name}: exit {rows[-1]['exit_code']} in {rows[-1]['seconds']:.0f} s", flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "device": args.device,
               "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"\nreal model sizes (untrained weights), {machine['cpu']}, {args.threads} torch threads, "
          f"device {args.device}")
    width = max([len(k) for r in rows for k in r["figures"]] + [10])
    for r in rows:
        status = "ok" if r["exit_code"] == 0 else f"FAILED (exit {r['exit_code']}, see {out / (r['name'] + '.log')})"
        print(f"\n{r['name']} ({r['seconds']:.0f} s): {status}")
        for k, v in r["figures"].items():
            print(f"  {k:<{width}}  {v}")
    write_json_atomic(out / "real_size.json", {"machine": machine, "bundle_mb": size_mb, "bundle_build_s": build_s,
                                               "benchmarks": rows})
    print(f"written {out / 'real_size.json'}")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
