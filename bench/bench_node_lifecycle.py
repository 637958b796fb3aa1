"""Start-up and Ctrl-C of the folk_segmenter node as a process, the way ``ros2 launch`` runs it.

Per trial: start ``python -m folk_ros.ros.node`` in its own process group, time until its "ready" log line
(start-up: interpreter, model load, text encoding), then send SIGINT to the group twice, ``--gap`` seconds
apart (the terminal's Ctrl-C and the one launch forwards), and time until the process exits. A clean exit
is code 0 with no traceback in its output. Prints one row per trial and the summary (median, worst,
clean count), and writes them as JSON.

The trials share a text store (``text_cache_dir``) that starts empty. With the default vocabulary, whose
names are in the bundle's own ``text_cache/``, every start is ready before CLIP loads; the first start
(empty store) and the others are reported apart. Two more starts, last, ask for names the bundle has
never seen (:data:`NEW_NAMES`): the node is ready before CLIP loads, and its worker then loads CLIP and
encodes them (clouds wait for them). The first of the two is stopped while CLIP loads (its SIGINT 0.3 s
after ready); the second waits for the text (its "vocabulary text encoded" line) before its SIGINTs.

    python -m bench.bench_node_lifecycle [--trials 20] [--gap 0.05] [--bundle models/folk-synth]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from training.atomic import write_json_atomic

REPO = Path(__file__).resolve().parents[1]


NEW_NAMES = ("fire extinguisher", "coffee mug", "umbrella")
"""A vocabulary outside the bundle's and the store's: CLIP loads after ready to encode it."""


def trial(bundle: str, gap_s: float, text_store: Path, module: str = "folk_ros.ros.node",
          timeout: float = 120.0, vocabulary: tuple[str, ...] | None = None, wait_for_text: bool = False) -> dict:
    """One start, double SIGINT and exit; times in seconds. ``wait_for_text``: the SIGINTs come after the
    node's "vocabulary text encoded" line (``text_s``: start to that line), not right after ready."""
    t0 = time.perf_counter()
    names = ["-p", "vocabulary:=[" + ", ".join(f"'{n}'" for n in vocabulary) + "]"] if vocabulary else []
    proc = subprocess.Popen([sys.executable, "-m", module, "--ros-args", "-p", f"model_bundle:={bundle}",
                             "-p", "device:=cpu", "-p", f"text_cache_dir:={text_store}", *names], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = []
    while True:
        line = proc.stdout.readline()
        if not line or time.perf_counter() - t0 > timeout:
            break
        out.append(line)
        if "ready:" in line:
            break
    ready_s = time.perf_counter() - t0
    text_s = None
    while wait_for_text and time.perf_counter() - t0 < timeout:
        line = proc.stdout.readline()
        out.append(line)
        if not line or "vocabulary text encoded" in line:
            text_s = time.perf_counter() - t0 if line else None
            break
    time.sleep(0.3)
    t1 = time.perf_counter()
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(gap_s)
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    try:
        rest, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, _ = proc.communicate()
    exit_s = time.perf_counter() - t1
    text = "".join(out) + rest
    return {"ready_s": ready_s, "text_s": text_s, "exit_s": exit_s, "code": proc.returncode,
            "traceback": "Traceback" in text or "KeyboardInterrupt" in text,
            "clean": proc.returncode == 0 and "Traceback" not in text}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_node_lifecycle", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20,
                   help="start / Ctrl-C cycles with the default vocabulary (two more with new names follow)")
    p.add_argument("--gap", type=float, default=0.05, help="seconds between the two SIGINTs")
    p.add_argument("--bundle", default="models/folk-synth", help="model bundle")
    p.add_argument("--out", type=Path, default=Path("out/bench/node_lifecycle.json"), help="JSON result path")
    args = p.parse_args(argv)
    rows = []
    kinds = ["first"] + ["again"] * (args.trials - 1) + ["new names, Ctrl-C while CLIP loads", "new names"]
    with tempfile.TemporaryDirectory() as store:
        for k, kind in enumerate(kinds):
            new = kind.startswith("new names")
            rows.append({**trial(args.bundle, args.gap, Path(store), vocabulary=NEW_NAMES if new else None,
                                 wait_for_text=kind == "new names"), "kind": kind})
            r = rows[-1]
            text = f", text encoded at {r['text_s']:.2f} s" if r["text_s"] is not None else ""
            print(f"trial {k + 1:>2}: ready {r['ready_s']:.2f} s{text} ({r['kind']}), exit "
                  f"{r['exit_s']:.2f} s after the first SIGINT, code {r['code']}, "
                  f"{'clean' if r['clean'] else 'NOT clean'}", flush=True)
    ready, exit_ = np.array([r["ready_s"] for r in rows]), np.array([r["exit_s"] for r in rows])
    known, again = ready[:-2], ready[1:-2]
    summary = {"trials": len(rows), "clean": sum(r["clean"] for r in rows),
               "ready_median_s": float(np.median(known)), "ready_max_s": float(known.max()),
               "ready_first_s": float(ready[0]),
               "ready_again_median_s": float(np.median(again)) if again.size else None,
               "ready_new_names_s": float(ready[-1]), "text_new_names_s": rows[-1]["text_s"],
               "exit_during_clip_load_s": float(exit_[-2]),
               "exit_median_s": float(np.median(exit_)), "exit_max_s": float(exit_.max()), "gap_s": args.gap}
    again_s, text_s = summary["ready_again_median_s"], summary["text_new_names_s"]
    print(f"\n{summary['clean']} of {summary['trials']} clean; start-up to ready: first (empty text store) "
          f"{summary['ready_first_s']:.2f} s, again median {'-' if again_s is None else f'{again_s:.2f} s'}, "
          f"new names {summary['ready_new_names_s']:.2f} s (their text encoded at "
          f"{'-' if text_s is None else f'{text_s:.2f} s'}); SIGINT to exit median {summary['exit_median_s']:.2f} s "
          f"(max {summary['exit_max_s']:.2f}; while CLIP loads {summary['exit_during_clip_load_s']:.2f})")
    write_json_atomic(args.out, {"summary": summary, "trials": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
