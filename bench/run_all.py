"""``make bench``: every benchmark of bench/ in one command, one summary table, one JSON.

Each benchmark runs as its own process with settings sized so that all of them fit in about 15 minutes
on 2 CPU cores, writes its own JSON under ``--out`` (default ``out/bench/``), and gives the summary a
few headline figures and ratios. The summary (machine, threads, every figure) is printed and written to
``<out>/summary.json``. A benchmark that fails is reported with its exit code and the run goes on.

    python -m bench.run_all [--threads 2] [--bundle models/folk-synth] [--out out/bench] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.atomic import write_json_atomic

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bench:
    """One benchmark: its module, its arguments (``{out}``, ``{threads}``, ``{bundle}`` filled in) and what
    the summary takes from its JSON."""

    name: str
    module: str
    args: tuple[str, ...]
    figures: Callable[[dict], dict[str, float | str]]


def _node_latency(d: dict) -> dict:
    rows = {r["points"]: r for r in d["rows"] if r["cloud"] == "box room"}
    held_out = [r for r in d["rows"] if r["cloud"] != "box room"]
    out = {f"total ms at {n // 1000}k points": round(r["total"], 1) for n, r in rows.items()}
    out.update({f"proposals ms at {n // 1000}k (network + post)": round(r["proposals"] + r["postprocess"], 1)
                for n, r in rows.items()})
    out.update({f"post-processing share at {n // 1000}k": round(r["postprocess_share"], 2) for n, r in rows.items()})
    out.update({f"student ms at {n // 1000}k": round(r["student"], 1) for n, r in rows.items()})
    out.update({f"messages ms at {n // 1000}k": round(r["messages"], 1) for n, r in rows.items()})
    if 100_000 in rows and 200_000 in rows:
        out["total 200k / 100k"] = round(rows[200_000]["total"] / rows[100_000]["total"], 2)
    if held_out:
        out[f"held-out rooms ({len(held_out)}): points"] = " / ".join(f"{r['points'] // 1000}k" for r in held_out)
        out["held-out rooms: total ms"] = " / ".join(f"{r['total']:.0f}" for r in held_out)
        out["held-out rooms: post-processing share"] = " / ".join(f"{r['postprocess_share']:.2f}" for r in held_out)
    return out


def _node_lifecycle(d: dict) -> dict:
    s = d["summary"]
    return {"clean Ctrl-C exits": f"{s['clean']}/{s['trials']}",
            "start-up to ready s, first (empty text store)": round(s["ready_first_s"], 2),
            "start-up to ready s, again (median)": round(s["ready_again_median_s"], 2),
            "start-up to ready s, new names": round(s["ready_new_names_s"], 2),
            "start-up to new names encoded s": s["text_new_names_s"] and round(s["text_new_names_s"], 2),
            "SIGINT to exit s (median)": round(s["exit_median_s"], 3),
            "SIGINT to exit s (max; while CLIP loads)": f"{s['exit_max_s']:.2f}; {s['exit_during_clip_load_s']:.2f}"}


def _node_soak(d: dict) -> dict:
    v, m = d["vocabulary"], d["memory"]
    out = {f"{v['names']:,}-name vocabulary takes effect s": round(v["takes_effect_s"], 2),
           "executor worst answer ms during it": round(v["ping_max_ms_during"], 1)}
    if m is not None:
        rss = f"{m['rss_mb_after_ref']:.0f} / {m['rss_mb_last']:.0f}"
        out.update({f"RSS MB after 10 / {m['clouds']:,} clouds": rss,
                    f"RSS {m['clouds']:,} clouds / 10 clouds": round(m["last_over_ref"], 3)})
    return out


def _live_map(d: dict) -> dict:
    c, r = d["cost"], d["relabel"]
    rows = c["clouds"]
    return {"map points (last)": rows[-1]["map_points"], "map update ms (first)": round(rows[0]["update_ms"]),
            "map update ms (last)": round(rows[-1]["update_ms"]),
            "last / first map update": round(c["last_over_first_update"], 2),
            "last / first per-cloud full pass": round(c.get("full_pass_last_over_first", float("nan")), 2),
            "re-label 1,000 instances ms": round(r["relabel_ms"], 2),
            "query 1,000 instances ms": round(r["query_ms"], 1)}


def _mask3d(d: dict) -> dict:
    out = {f"Mask3D full-size forward s at {r['points'] // 1000}k ({r['backend']})": round(r["full_s"], 2)
           for r in d["rows"]}
    for backend, e in d["exponents"].items():
        out[f"forward ~ points^k, k ({backend})"] = round(e["full_vs_points"], 2)
    return out


def _sparse_ops(d: dict) -> dict:
    return {f"{case} speed-up vs {d['before_rev']}": round(v["speedup"], 2) for case, v in d["summary"].items()}


def _teacher(d: dict) -> dict:
    s = d["summary"]
    return {"teacher s per scene": round(s["teacher"]["total"], 2),
            "baseline s per scene": round(s["baseline"]["total"], 2),
            "baseline / teacher": round(d["baseline_over_teacher"], 2)}


def _no_json(d: dict) -> dict:
    return {}


BENCHES = (
    Bench("node_latency", "bench.bench_node_latency",
          ("--bundle", "{bundle}", "--sizes", "50000", "100000", "200000", "--repeats", "2", "--threads", "{threads}",
           "--out", "{out}/node_latency.json"), _node_latency),
    Bench("node_lifecycle", "bench.bench_node_lifecycle",
          ("--bundle", "{bundle}", "--trials", "5", "--out", "{out}/node_lifecycle.json"), _node_lifecycle),
    Bench("node_soak", "bench.bench_node_soak",
          ("--bundle", "{bundle}", "--names", "1000", "--clouds", "1000", "--threads", "{threads}",
           "--out", "{out}/node_soak.json"), _node_soak),
    Bench("live_map", "bench.bench_live_map",
          ("--bundle", "{bundle}", "--parts", "relabel", "cost", "--full-pass", "--threads", "{threads}",
           "--out", "{out}/live_map.json"), _live_map),
    Bench("mask3d", "bench.bench_mask3d",
          ("--points", "50000", "100000", "--repeats", "1", "--threads", "{threads}", "--backends", "torch",
           "--out", "{out}/mask3d.json"), _mask3d),
    Bench("sparse_ops", "bench.bench_sparse_ops",
          ("--cases", "conv", "voxelize", "fps", "--repeats", "1", "--threads", "{threads}",
           "--out", "{out}/sparse_ops.json"), _sparse_ops),
    Bench("teacher", "bench.bench_teacher",
          ("--scenes", "1", "--frames", "60", "--threads", "{threads}", "--out", "{out}/teacher.json"), _teacher),
    Bench("teacher_completion_sweep", "bench.teacher_completion_sweep",
          ("--scenes", "1", "--frames", "60", "--max-pairs", "40", "--kernels", "15", "--radii", "1"), _no_json),
)


def run(bench: Bench, out: Path, threads: int, bundle: str) -> dict:
    args = [a.format(out=out, threads=threads, bundle=bundle) for a in bench.args]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", bench.module, *args], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    (out / f"{bench.name}.log").write_text(proc.stdout + proc.stderr)
    row = {"name": bench.name, "command": " ".join(["python -m", bench.module, *args]), "seconds": round(seconds, 1),
           "exit_code": proc.returncode, "figures": {}}
    json_path = next((Path(a) for a in args if a.endswith(".json")), None)
    if proc.returncode == 0 and json_path is not None and json_path.is_file():
        try:
            row["figures"] = bench.figures(json.loads(json_path.read_text()))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            row["figures"] = {"summary error": f"{type(err).__name__}: {err}"}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of every benchmark")
    p.add_argument("--bundle", default="models/folk-synth", help="model bundle of the node benchmarks")
    p.add_argument("--out", type=Path, default=Path("out/bench"),
                   help="folder of summary.json and every benchmark's JSON and log")
    p.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], default=None,
                   help="run only these benchmarks")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "python": platform.python_version(), "threads": args.threads, "bundle": args.bundle,
               "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    rows = []
    for bench in BENCHES:
        if args.only and bench.name not in args.only:
            continue
        print(f"[bench] {bench.name} ...", flush=True)
        rows.append(run(bench, args.out.resolve(), args.threads, args.bundle))
        print(f"[bench] {bench.name}: exit {rows[-1]['exit_code']} in {rows[-1]['seconds']:.0f} s", flush=True)
    print(f"\nsummary: {machine['cpu']}, {machine['cpu_count']} CPUs, {args.threads} torch threads, "
          f"bundle {args.bundle}")
    width = max([len(k) for r in rows for k in r["figures"]] + [10])
    for r in rows:
        log = args.out / f"{r['name']}.log"
        status = "ok" if r["exit_code"] == 0 else f"FAILED (exit {r['exit_code']}, see {log})"
        print(f"\n{r['name']} ({r['seconds']:.0f} s): {status}")
        for k, v in r["figures"].items():
            print(f"  {k:<{width}}  {v}")
    total = sum(r["seconds"] for r in rows)
    print(f"\nall benchmarks: {total / 60:.1f} min")
    write_json_atomic(args.out / "summary.json", {"machine": machine, "benchmarks": rows, "total_s": total})
    print(f"written {args.out / 'summary.json'}")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
